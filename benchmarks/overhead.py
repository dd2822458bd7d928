"""Cost of a GeN step relative to the inner optimizer's step, measured in one run.

For each model (MLP 784-512-512-10 at batch 256, a small CNN, a small
transformer LM) it times the jitted inner step (value_and_grad + adam) and the
GeN step of each mode refreshing every 1, 4 and 8 steps, with ``lax.cond``
(``refresh_every``) and with the static ``refresh`` flag ('s': two compiled
steps, no ``cond``), plus a step between refreshes.  Each figure is the mean
time per step over a cycle of 8 steps, as a ratio to the inner step's cycle in
the same round (median over interleaved rounds, so drifts of the machine
cancel), and the compiled memory (``memory_analysis()``: arguments + outputs +
scratch) as a ratio.  ``--torch`` adds the authors' PyTorch package
``gen-optim`` on the same MLP shapes (``pip install -e ".[bench-torch]"``).

Run: ``python benchmarks/overhead.py --out benchmarks/results/overhead-cpu.json``
(about 10 minutes on 2 CPU cores); ``--quick`` is the smoke test the suite runs;
``--models mlp transformer --rounds 5`` fits in 5 minutes on a GPU.
"""

import argparse
import functools
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from models import PROBLEMS, Problem

import gen_optax

MODES = ("forward-over-reverse", "forward-over-forward", "probes", "one-probe")
CYCLE = 8  # a multiple of every refresh period
NEVER = 0  # refresh_every of the "between refreshes" row: refresh=False always


class Config(NamedTuple):
  """One timed variant: the inner step, or GeN with a mode and period."""

  method: str
  refresh_every: int | None
  static: bool  # refresh chosen at trace time (two compilations, no lax.cond)
  tx: optax.GradientTransformation


def make_step(problem: Problem, config: Config) -> tuple[Callable, float]:
  """A step ``(params, state, batch, fresh, i) -> (params, state)``, and memory.

  The memory is the compiled program's arguments + outputs + scratch, in bytes.
  GeN's value_fn sees the fresh batch (the recommended use).
  """
  gen = config.refresh_every is not None

  def step(params, state, batch, fresh, refresh=None):
    grads = jax.grad(problem.loss)(params, batch)
    extra = {"value_fn": lambda p: problem.loss(p, fresh)} if gen else {}
    if refresh is not None:
      extra["refresh"] = refresh
    updates, state = config.tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  args = (
    problem.params,
    config.tx.init(problem.params),
    *[problem.batch(jax.random.key(0))] * 2,
  )
  if not config.static:
    jitted = jax.jit(step)
    memory = compiled_bytes(jitted, args)
    return (lambda p, s, b, f, i: jitted(p, s, b, f)), memory
  on, off = (jax.jit(functools.partial(step, refresh=r)) for r in (True, False))
  k = config.refresh_every
  if k == NEVER:
    return (lambda p, s, b, f, i: off(p, s, b, f)), compiled_bytes(off, args)
  memory = max(compiled_bytes(fn, args) for fn in (on, off))
  return (lambda p, s, b, f, i: (on if i % k == 0 else off)(p, s, b, f)), memory


def compiled_bytes(fn: Callable, args: tuple) -> float:
  """Arguments + outputs + scratch of the compiled ``fn(*args)``, in bytes."""
  m = fn.lower(*args).compile().memory_analysis()
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return float(total - m.alias_size_in_bytes)


def run_problem(problem: Problem, configs: list[Config], rounds: int) -> list[dict]:
  """Times every config in interleaved cycles.

  Ratios are to the inner step of the same round, so drifts of the machine cancel.
  """
  keys = jax.random.split(jax.random.key(1), 2 * CYCLE)
  batches = [problem.batch(k) for k in keys]
  steps, memories, carries = [], [], []
  for config in configs:
    step, memory = make_step(problem, config)
    steps.append(step)
    memories.append(memory)
    carries.append((problem.params, config.tx.init(problem.params)))
  times = np.zeros((len(configs), rounds))  # seconds per cycle of CYCLE steps
  for r in range(rounds + 1):  # round 0 warms up
    for c, step in enumerate(steps):
      params, state = carries[c]
      start = time.perf_counter()
      for i in range(CYCLE):
        params, state = step(params, state, batches[2 * i], batches[2 * i + 1], i)
      jax.block_until_ready((params, state))
      if r:
        times[c, r - 1] = time.perf_counter() - start
      carries[c] = (params, state)
  rows = []
  for c, config in enumerate(configs):
    rows.append(
      {
        "model": problem.name,
        "method": config.method,
        "refresh_every": config.refresh_every,
        "static_refresh": config.static,
        "ms_per_step": 1e3 * float(np.median(times[c])) / CYCLE,
        "ratio": float(np.median(times[c] / times[0])),
        "memory_mb": memories[c] / 2**20,
        "memory_ratio": memories[c] / max(memories[0], 1),
      }
    )
    print_row(rows[-1])
  return rows


def configs_for(modes, periods, static_periods) -> list[Config]:
  configs = [
    Config("adam (inner step)", None, False, optax.adam(1e-3)),
    Config("gen, between refreshes", NEVER, True, gen_optax.gen(optax.adam(1.0))),
  ]
  timed = [(k, False) for k in periods] + [(k, True) for k in static_periods]
  for mode in modes:
    for k, static in timed:
      tx = gen_optax.gen(optax.adam(1.0), mode=mode, refresh_every=k)
      configs.append(Config(f"gen {mode}", k, static, tx))
  return configs


def print_row(row: dict[str, Any]) -> None:
  k = row["refresh_every"]
  period = "-" if k in (None, NEVER) else f"{k}{'s' if row['static_refresh'] else ''}"
  print(
    f"{row['model']:12s} {row['method']:27s} {period:>3}"
    f" {row['ms_per_step']:9.2f} {row['ratio']:6.2f}"
    f" {row['memory_mb']:9.1f} {row['memory_ratio']:6.2f}",
    flush=True,
  )


def torch_comparison(repeats: int) -> dict[str, float]:
  """gen-optim's lr_parabola vs our probes/exact refresh on the MLP shapes."""
  import torch  # optional: the bench-torch extra
  from GeN import lr_parabola

  torch.manual_seed(0)
  torch.set_num_threads(max(1, torch.get_num_threads()))
  net = torch.nn.Sequential(
    torch.nn.Linear(784, 512),
    torch.nn.ReLU(),
    torch.nn.Linear(512, 512),
    torch.nn.ReLU(),
    torch.nn.Linear(512, 10),
  )
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  data = [(torch.randn(256, 784), torch.randint(0, 10, (256,))) for _ in range(4)]

  def batches():
    while True:
      yield from data

  tr_iter = batches()

  def torch_step(refresh: bool) -> float:
    x, y = next(tr_iter)
    start = time.perf_counter()
    loss_fn(net(x), y).backward()
    if refresh:
      lr_parabola(net, opt, tr_iter=tr_iter, task="image_cls", device="cpu")
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start

  for _ in range(3):
    torch_step(False)
    torch_step(True)
  plain = np.median([torch_step(False) for _ in range(repeats)])
  refresh = np.median([torch_step(True) for _ in range(repeats)])

  problem = PROBLEMS["mlp"]()
  configs = configs_for(("probes", "forward-over-forward"), [1], [])
  rows = run_problem(problem, configs, rounds=3)
  result = {
    "torch_plain_ms": 1e3 * plain,
    "torch_refresh_ms": 1e3 * refresh,
    "torch_refresh_ratio": refresh / plain,
    "jax_plain_ms": rows[0]["ms_per_step"],
  }
  for row in rows[2:]:
    mode = row["method"].removeprefix("gen ")
    result[f"jax_refresh_{mode}_ms"] = row["ms_per_step"]
    result[f"jax_refresh_{mode}_ratio"] = row["ratio"]
    result[f"ours_over_torch_refresh_{mode}"] = row["ms_per_step"] / (1e3 * refresh)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
  parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
  parser.add_argument("--periods", nargs="+", type=int, default=[1, 4, 8])
  parser.add_argument(
    "--static-periods",
    nargs="+",
    type=int,
    default=[4, 8],
    help="periods also timed with the static refresh flag (no lax.cond)",
  )
  parser.add_argument("--rounds", type=int, default=7, help="timed cycles of 8 steps")
  parser.add_argument("--torch", action="store_true", help="compare with gen-optim")
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--out", type=Path, default=None, help="JSON results file")
  args = parser.parse_args()
  if args.quick:
    args.models, args.periods, args.static_periods, args.rounds = (
      ["mlp"],
      [1, 4],
      [4],
      1,
    )
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
  print(
    "k: refresh period ('s': static refresh flag, no lax.cond); "
    "ratios to the inner step; memory: arguments + outputs + scratch"
  )
  print(
    f"{'model':12s} {'method':27s} {'k':>3} {'ms/step':>9} {'ratio':>6}"
    f" {'mem MB':>9} {'mem x':>6}"
  )
  rows = []
  configs = configs_for(args.modes, args.periods, args.static_periods)
  for name in args.models:
    problem = PROBLEMS[name]()
    if args.quick:
      full = problem.batch
      problem = problem._replace(
        batch=lambda key, b=full: jax.tree.map(lambda x: x[:8], b(key))
      )
    rows.extend(run_problem(problem, configs, args.rounds))
  results: dict[str, Any] = {
    "device": f"{device.device_kind} ({device.platform})",
    "machine": platform.processor() or platform.machine(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "rows": rows,
  }
  if args.torch:
    results["torch"] = torch_comparison(repeats=20)
    for key, value in results["torch"].items():
      print(f"{key:42s} {value:8.3f}")
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
  main()
