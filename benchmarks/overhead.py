"""Cost of a GeN step relative to the inner optimizer's step, measured in one run.

For each model (MLP 784-512-512-10 at batch 256, a small CNN, a small
transformer LM) it times the jitted inner step (value_and_grad + adam) and the
GeN step of each mode at refresh every 1, 4 and 8 steps: the mean time per step
over whole refresh cycles (median over cycles), the median time of the steps
between refreshes, and the compiled scratch memory (``memory_analysis()``),
each as a ratio to the inner step.  ``--torch`` adds the authors' PyTorch
package ``gen-optim`` on the same MLP shapes (``pip install -e ".[bench-torch]"``).

Run: ``python benchmarks/overhead.py`` (about 5 minutes on 2 CPU cores);
``--quick`` is the smoke test the suite runs; the same script runs on a GPU.
"""

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from models import PROBLEMS, Problem

import gen_optax

MODES = ("forward-over-reverse", "forward-over-forward", "probes", "one-probe")
CYCLE = 8  # a multiple of every refresh period


def make_step(
  problem: Problem, tx: optax.GradientTransformation, gen: bool
) -> Callable:
  """A jitted step; GeN's value_fn sees a fresh batch (the recommended use)."""

  def step(params, state, batch, fresh):
    grads = jax.grad(problem.loss)(params, batch)
    extra = {"value_fn": lambda p: problem.loss(p, fresh)} if gen else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def time_steps(problem: Problem, tx, gen: bool, cycles: int) -> dict[str, float]:
  """Per-step times over `cycles` cycles of CYCLE steps, after one warm-up cycle."""
  step = make_step(problem, tx, gen)
  keys = jax.random.split(jax.random.key(0), 2 * CYCLE)
  batches = [problem.batch(k) for k in keys]
  params = jax.tree.map(lambda x: x.copy(), problem.params)
  state = tx.init(params)
  compiled = step.lower(params, state, batches[0], batches[1]).compile()
  memory = compiled.memory_analysis()
  times = np.zeros((cycles + 1, CYCLE))
  for cycle in range(cycles + 1):
    for i in range(CYCLE):
      start = time.perf_counter()
      params, state = step(params, state, batches[2 * i], batches[2 * i + 1])
      jax.block_until_ready((params, state))
      times[cycle, i] = time.perf_counter() - start
  times = times[1:]
  return {
    "per_step": float(np.median(times.mean(axis=1))),
    "step_times": times,
    "temp_bytes": float(getattr(memory, "temp_size_in_bytes", np.nan)),
  }


def run_problem(problem: Problem, modes, periods, cycles) -> list[dict[str, Any]]:
  inner = time_steps(problem, optax.adam(1e-3), gen=False, cycles=cycles)
  rows = [
    {
      "model": problem.name,
      "method": "adam (inner step)",
      "refresh_every": None,
      "ms_per_step": 1e3 * inner["per_step"],
      "ratio": 1.0,
      "between_ratio": 1.0,
      "temp_mb": inner["temp_bytes"] / 2**20,
      "temp_ratio": 1.0,
    }
  ]
  print_row(rows[0])
  inner_median = float(np.median(inner["step_times"]))
  for mode in modes:
    for k in periods:
      tx = gen_optax.gen(optax.adam(1.0), mode=mode, refresh_every=k)
      result = time_steps(problem, tx, gen=True, cycles=cycles)
      between = result["step_times"][:, [i % k != 0 for i in range(CYCLE)]]
      rows.append(
        {
          "model": problem.name,
          "method": f"gen {mode}",
          "refresh_every": k,
          "ms_per_step": 1e3 * result["per_step"],
          "ratio": result["per_step"] / inner["per_step"],
          "between_ratio": (
            float(np.median(between)) / inner_median if between.size else None
          ),
          "temp_mb": result["temp_bytes"] / 2**20,
          "temp_ratio": result["temp_bytes"] / max(inner["temp_bytes"], 1.0),
        }
      )
      print_row(rows[-1])
  return rows


def print_row(row: dict[str, Any]) -> None:
  between = row["between_ratio"]
  print(
    f"{row['model']:12s} {row['method']:27s} {row['refresh_every'] or '-':>3}"
    f" {row['ms_per_step']:9.2f} {row['ratio']:6.2f}"
    f" {'-' if between is None else f'{between:.2f}':>8s}"
    f" {row['temp_mb']:9.1f} {row['temp_ratio']:6.2f}",
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
  ours_plain = time_steps(problem, optax.adam(1e-3), gen=False, cycles=2)
  result = {
    "torch_plain_ms": 1e3 * plain,
    "torch_refresh_ms": 1e3 * refresh,
    "torch_refresh_ratio": refresh / plain,
    "jax_plain_ms": 1e3 * ours_plain["per_step"],
  }
  for mode in ("probes", "forward-over-forward"):
    tx = gen_optax.gen(optax.adam(1.0), mode=mode)
    ours = time_steps(problem, tx, gen=True, cycles=2)["per_step"]
    result[f"jax_refresh_{mode}_ms"] = 1e3 * ours
    result[f"jax_refresh_{mode}_ratio"] = ours / ours_plain["per_step"]
    result[f"ours_over_torch_refresh_{mode}"] = ours / refresh
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
  parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
  parser.add_argument("--periods", nargs="+", type=int, default=[1, 4, 8])
  parser.add_argument("--cycles", type=int, default=4, help="timed cycles of 8 steps")
  parser.add_argument("--torch", action="store_true", help="compare with gen-optim")
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--out", type=Path, default=None, help="JSON results file")
  args = parser.parse_args()
  if args.quick:
    args.models, args.periods, args.cycles = ["mlp"], [1, 4], 1
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
  print(
    f"{'model':12s} {'method':27s} {'k':>3} {'ms/step':>9} {'ratio':>6}"
    f" {'between':>8} {'temp MB':>9} {'mem x':>6}"
  )
  rows = []
  for name in args.models:
    problem = PROBLEMS[name]()
    if args.quick:
      small = problem.batch
      problem = problem._replace(
        batch=lambda key, b=small: jax.tree.map(lambda x: x[:8], b(key))
      )
    rows.extend(run_problem(problem, args.modes, args.periods, args.cycles))
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
