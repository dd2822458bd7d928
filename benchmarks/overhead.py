"""Cost of a GeN step relative to the inner optimizer's step, measured in one run.

For each model (MLP 784-512-512-10 at batch 256, a small CNN, a small
transformer LM) it times the jitted inner step (value_and_grad + adam) and the
GeN step of each mode refreshing every 1, 4 and 8 steps, with ``lax.cond``
(``refresh_every``) and with the static flags ``refresh`` and
``refresh_next`` ('s': a compiled step per pair of flags, no ``cond``), plus
steps between refreshes.  GeN measures along the
previous step on the gradient's own batch, either through ``value_fn`` (its
own ``jax.jvp``, which XLA may or may not merge with the gradient pass) or
fused with the gradient by ``gen_optax.value_and_grad`` ("fused" rows).

Every step donates its params and state (``donate_argnums``).  Each figure is
the time per step over a cycle of 8 steps, as a ratio to the
inner step's cycle in the same round (median over interleaved rounds, so
drifts of the machine cancel), and the compiled memory (``memory_analysis()``:
arguments + outputs + scratch) as a ratio.  The whole sweep is repeated
``--runs`` times: every run is saved, and each summary row is the median over
runs with its min–max.

``--seed PATH`` adds the seed project's PyTorch ``ExactGen`` (HVP by
``torch.autograd.functional.vhp``, the inner optimizer stepped twice) on the
MLP shapes against a plain PyTorch Adam step; ``--torch`` adds the authors'
package ``gen-optim`` (``lr_parabola``) the same way (``pip install -e
".[bench-torch]"``).  Both are timed in interleaved rounds in every run.

The defaults (``mode="auto"``) next to the previous default, every step and
every 8 steps with the static flag, in one sweep of their own: ``python
benchmarks/overhead.py --modes auto forward-over-reverse --fused-modes auto
forward-over-reverse --periods 1 --static-periods 8 --runs 3 --out
benchmarks/results/overhead-defaults.json``.

Run: ``python -m benchmarks.overhead --runs 3 --seed SEED --torch
--out benchmarks/results/overhead-cpu.json`` (about 45 minutes on 2 CPU
cores); ``--quick`` is the smoke test the suite runs.
"""

import argparse
import functools
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

import gen_optax
from benchmarks.models import TIMED_MODELS, Problem, sample_batch

MODES = ("auto", "forward-over-reverse", "forward-over-forward", "probes", "one-probe")
FUSED_MODES = ("auto", "forward-over-reverse", "forward-over-forward")
CYCLE = 8  # a multiple of every refresh period
NEVER = 0  # refresh_every of the "between refreshes" row: refresh=False always


class Config(NamedTuple):
  """One timed variant: the inner step, or GeN with a mode and period."""

  method: str
  refresh_every: int | None
  static: bool  # refresh chosen at trace time (compiled per flag, no lax.cond)
  tx: optax.GradientTransformation
  fused_mode: str | None = None  # measured with the gradient, in this mode
  # With the static flag: also tell gen whether the next step refreshes
  # (refresh_next), so that only the step before a refresh stores itself.
  tells_next: bool = True


# The baseline of every ratio: the inner step alone (value_and_grad + Adam).
INNER = Config("adam (inner step)", None, False, optax.adam(1e-3))


def train_step(problem: Problem, config: Config) -> Callable:
  """The training step ``(params, state, batch, refresh, refresh_next)``.

  GeN measures on the gradient's own batch (one batch per step).
  """
  gen = config.refresh_every is not None

  def step(params, state, batch, refresh=None, refresh_next=None):
    extra: dict[str, Any] = {} if refresh is None else {"refresh": refresh}
    if refresh_next is not None:
      extra["refresh_next"] = refresh_next
    if config.fused_mode is not None:
      fn = gen_optax.value_and_grad(
        problem.loss, mode=config.fused_mode, refresh=refresh is not False
      )
      (_, grads), line = fn(params, state, batch)
      extra["line"] = line
    else:
      grads = jax.grad(problem.loss)(params, batch)
      if gen:
        extra["value_fn"] = lambda p: problem.loss(p, batch)
    updates, state = config.tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return step


def step_args(problem: Problem, params: Any, config: Config) -> tuple:
  """Example arguments ``(params, state, batch)`` of ``train_step``."""
  return params, config.tx.init(params), sample_batch(problem, jax.random.key(0))


def make_step(problem: Problem, params: Any, config: Config) -> tuple[Callable, float]:
  """A step ``(params, state, batch, i) -> (params, state)``, and memory.

  The memory is the compiled program's arguments + outputs + scratch, in bytes.
  """
  step = train_step(problem, config)
  args = step_args(problem, params, config)
  # Params and state donated, as a training loop that cares for speed does.
  jit = functools.partial(jax.jit, donate_argnums=(0, 1))
  if not config.static:
    jitted = jit(step)
    memory = compiled_bytes(jitted, args)
    return (lambda p, s, b, i: jitted(p, s, b)), memory
  # The flags of step i: a refresh every k steps (never for NEVER), and
  # whether the next step refreshes (at CYCLE's end for NEVER: the one step
  # of the cycle that stores itself).
  k = config.refresh_every
  period = CYCLE if k == NEVER else k

  def flags(i: int) -> tuple[bool, bool | None]:
    refresh = k != NEVER and i % k == 0
    return refresh, (i + 1) % period == 0 if config.tells_next else None

  steps = {
    f: jit(functools.partial(step, refresh=f[0], refresh_next=f[1]))
    for f in dict.fromkeys(flags(i) for i in range(CYCLE))
  }
  memory = max(compiled_bytes(fn, args) for fn in steps.values())
  return (lambda p, s, b, i: steps[flags(i)](p, s, b)), memory


def compiled_bytes(fn: Callable, args: tuple) -> float:
  """Arguments + outputs + scratch of the compiled ``fn(*args)``, in bytes."""
  m = fn.lower(*args).compile().memory_analysis()
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return float(total - m.alias_size_in_bytes)


def params_bytes(params: Any) -> float:
  return float(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))


def prepare(problem: Problem, params: Any, configs: list[Config]) -> list[list]:
  """Compiles every config once: [step, memory, carry] per config.

  The carry (params, state) is replaced after each timed cycle: its buffers
  are donated.
  """
  prepared = []
  for config in configs:
    step, memory = make_step(problem, params, config)
    copy = jax.tree.map(jax.numpy.copy, params)  # donated: one per config
    prepared.append([step, memory, (copy, config.tx.init(copy))])
  return prepared


def prepare_models(
  names: list[str], configs: list[Config], batch_size: int | None = None
) -> list[tuple[Problem, list[list]]]:
  """Each named timed model with its configs compiled (see :func:`prepare`)."""
  problems = []
  for name in names:
    problem = TIMED_MODELS[name]()
    if batch_size is not None:
      problem = problem._replace(batch_size=batch_size)
    params = problem.init(jax.random.key(0))
    problems.append((problem, prepare(problem, params, configs)))
  return problems


def time_run(
  problems: list[tuple[Problem, list[list]]],
  configs: list[Config],
  rounds: int,
  label: str,
) -> list[dict]:
  """One run: every model's configs timed (:func:`time_problem`), printed."""
  print(
    f"{label}\n{'model':12s} {'method':33s} {'k':>3}"
    f" {'ms/step':>9} {'ratio':>6} {'mem MB':>9} {'mem x':>6}"
  )
  rows = []
  for problem, prepared in problems:
    rows.extend(time_problem(problem, configs, prepared, rounds))
  return rows


def time_problem(
  problem: Problem, configs: list[Config], prepared: list[list], rounds: int
) -> list[dict]:
  """Times every config in interleaved cycles.

  Ratios are to the inner step of the same round, so drifts of the machine cancel.
  """
  keys = jax.random.split(jax.random.key(1), CYCLE)
  batches = [sample_batch(problem, k) for k in keys]
  times = np.zeros((len(configs), rounds))  # seconds per cycle of CYCLE steps
  for r in range(rounds + 1):  # round 0 warms up
    for c, (step, _, carry) in enumerate(prepared):
      params, state = carry
      start = time.perf_counter()
      for i in range(CYCLE):
        params, state = step(params, state, batches[i], i)
      jax.block_until_ready((params, state))
      if r:
        times[c, r - 1] = time.perf_counter() - start
      prepared[c][2] = (params, state)
  rows = []
  inner_memory = prepared[0][1]
  for c, config in enumerate(configs):
    memory = prepared[c][1]
    rows.append(
      {
        "model": problem.name,
        "method": config.method,
        "refresh_every": config.refresh_every,
        "static_refresh": config.static,
        "tells_next": config.static and config.tells_next,
        "ms_per_step": 1e3 * float(np.median(times[c])) / CYCLE,
        "ratio": float(np.median(times[c] / times[0])),
        "memory_mb": memory / 2**20,
        "memory_ratio": memory / max(inner_memory, 1),
        # Memory beyond the inner step's, in params-sized buffers.
        "extra_memory_in_params": (memory - inner_memory)
        / params_bytes(prepared[0][2][0]),
      }
    )
    print_row(rows[-1])
  return rows


def configs_for(modes, periods, static_periods, fused_modes) -> list[Config]:
  configs = [
    INNER,
    # Steps that do not refresh: a static loop on refresh_every=1 that does
    # not say what follows (every step stores itself: the next may refresh),
    # one that says refresh_next, a loop on refresh_every=8 (the lax.cond
    # stores the step before a refresh; the cycle holds one of either) and,
    # as the floor, a GeN that stores no step (along the current update).
    Config(
      "gen, between refreshes",
      NEVER,
      True,
      gen_optax.gen(optax.adam(1.0)),
      tells_next=False,
    ),
    Config(
      "gen, between refreshes, told refresh_next",
      NEVER,
      True,
      gen_optax.gen(optax.adam(1.0)),
    ),
    Config(
      "gen, between scheduled refreshes",
      NEVER,
      True,
      gen_optax.gen(optax.adam(1.0), refresh_every=CYCLE),
      tells_next=False,
    ),
    Config(
      "gen current_update, between refreshes",
      NEVER,
      True,
      gen_optax.gen(optax.adam(1.0), measure_along="current_update"),
    ),
  ]
  timed = [(k, False) for k in periods] + [(k, True) for k in static_periods]
  for mode in modes:
    for k, static in timed:
      tx = gen_optax.gen(optax.adam(1.0), mode=mode, refresh_every=k)
      configs.append(Config(f"gen {mode}", k, static, tx))
  # Fused: every step, or lazily with the static flag (the helper measures
  # on every call it is asked to, so a lax.cond period would waste it).
  for mode in fused_modes:
    for k, static in [(1, False)] + [(k, True) for k in static_periods]:
      tx = gen_optax.gen(optax.adam(1.0), mode=mode, refresh_every=k)
      configs.append(Config(f"gen {mode} fused", k, static, tx, fused_mode=mode))
  return configs


def print_row(row: dict[str, Any]) -> None:
  k = row["refresh_every"]
  period = "-" if k in (None, NEVER) else f"{k}{'s' if row['static_refresh'] else ''}"
  print(
    f"{row['model']:12s} {row['method']:33s} {period:>3}"
    f" {row['ms_per_step']:9.2f} {row['ratio']:6.2f}"
    f" {row['memory_mb']:9.1f} {row['memory_ratio']:6.2f}",
    flush=True,
  )


def torch_steps(seed: Path | None, gen_optim: bool) -> dict[str, Callable[[], float]]:
  """Timed PyTorch steps on the MLP shapes: plain Adam, and each GeN peer."""
  import torch  # optional: the bench-torch extra

  warnings.filterwarnings("ignore")  # functorch and jaxtyping deprecations
  torch.manual_seed(0)
  data = [(torch.randn(256, 784), torch.randint(0, 10, (256,))) for _ in range(4)]
  loss_fn = torch.nn.CrossEntropyLoss()

  def net() -> torch.nn.Module:
    return torch.nn.Sequential(
      torch.nn.Linear(784, 512),
      torch.nn.ReLU(),
      torch.nn.Linear(512, 512),
      torch.nn.ReLU(),
      torch.nn.Linear(512, 10),
    )

  def batches():
    while True:
      yield from data

  def timed(step: Callable[[Any, Any], None]) -> Callable[[], float]:
    it = batches()

    def run() -> float:
      x, y = next(it)
      start = time.perf_counter()
      step(x, y)
      return time.perf_counter() - start

    return run

  plain_net = net()
  plain_opt = torch.optim.Adam(plain_net.parameters(), lr=1e-3)

  def plain(x, y):
    plain_opt.zero_grad()
    loss_fn(plain_net(x), y).backward()
    plain_opt.step()

  steps = {"torch adam": timed(plain)}
  if seed is not None:
    # The seed project is a folder of sources, not an installed package.
    sys.path.insert(0, str(seed))
    from src.generalized_newtons_method import ExactGen, make_gen_optimizer

    seed_net = net()
    seed_opt = make_gen_optimizer(torch.optim.Adam, seed_net.parameters())
    scheduler = ExactGen(seed_opt, seed_net, loss_fn, 0.0, 1.0)

    def seed_exact(x, y):
      seed_opt.zero_grad()
      loss_fn(seed_net(x), y).backward()
      scheduler.step(x, y)
      seed_opt.step()

    steps["seed ExactGen"] = timed(seed_exact)
  if gen_optim:
    from GeN import lr_parabola

    peer_net = net()
    peer_opt = torch.optim.Adam(peer_net.parameters(), lr=1e-3)
    it = batches()

    def peer(x, y):
      peer_opt.zero_grad()
      loss_fn(peer_net(x), y).backward()
      lr_parabola(peer_net, peer_opt, tr_iter=it, task="image_cls", device="cpu")
      peer_opt.step()

    steps["gen-optim lr_parabola"] = timed(peer)
  return steps


def time_torch(steps: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
  """Ms per step and ratio to the plain step, median of interleaved rounds."""
  names = list(steps)
  times = np.zeros((len(names), rounds))
  for r in range(rounds + 1):  # round 0 warms up
    for n, name in enumerate(names):
      t = sum(steps[name]() for _ in range(CYCLE))
      if r:
        times[n, r - 1] = t
  result = {}
  for n, name in enumerate(names):
    result[f"{name} ms"] = 1e3 * float(np.median(times[n])) / CYCLE
    result[f"{name} ratio"] = float(np.median(times[n] / times[0]))
  return result


def summarize(runs: list[list[dict]]) -> list[dict]:
  """Per config: the median over runs of ms, ratio and memory, with min–max."""
  summary = []
  for rows in zip(*runs, strict=True):
    row = {k: v for k, v in rows[0].items() if not isinstance(v, float)}
    for key in ("ms_per_step", "ratio", "memory_mb", "memory_ratio"):
      values = [r[key] for r in rows]
      row[key] = float(np.median(values))
      row[f"{key}_min"], row[f"{key}_max"] = float(min(values)), float(max(values))
    row["extra_memory_in_params"] = rows[0]["extra_memory_in_params"]
    summary.append(row)
  return summary


def summarize_torch(runs: list[dict[str, float]]) -> dict[str, list[float]]:
  """Per figure: [median, min, max] over runs."""
  return {
    key: [float(np.median(v)), float(min(v)), float(max(v))]
    for key in runs[0]
    for v in [[run[key] for run in runs]]
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--models", nargs="+", default=list(TIMED_MODELS), choices=TIMED_MODELS
  )
  parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
  parser.add_argument("--fused-modes", nargs="*", default=list(FUSED_MODES))
  parser.add_argument("--periods", nargs="+", type=int, default=[1, 4, 8])
  parser.add_argument(
    "--static-periods",
    nargs="+",
    type=int,
    default=[4, 8],
    help="periods also timed with the static refresh flag (no lax.cond)",
  )
  parser.add_argument("--rounds", type=int, default=7, help="timed cycles of 8 steps")
  parser.add_argument("--runs", type=int, default=3, help="full sweeps, all saved")
  parser.add_argument("--seed", type=Path, default=None, help="seed project folder")
  parser.add_argument("--torch", action="store_true", help="compare with gen-optim")
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--out", type=Path, default=None, help="JSON results file")
  args = parser.parse_args()
  if args.quick:
    args.models, args.periods, args.static_periods, args.rounds, args.runs = (
      ["mlp"],
      [1, 4],
      [4],
      1,
      2,
    )
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
  print(
    "k: refresh period ('s': static refresh flag, no lax.cond); "
    "ratios to the inner step; memory: arguments + outputs + scratch"
  )
  configs = configs_for(args.modes, args.periods, args.static_periods, args.fused_modes)
  problems = prepare_models(args.models, configs, 8 if args.quick else None)
  torch = torch_steps(args.seed, args.torch) if args.seed or args.torch else None
  runs, torch_runs = [], []
  for run in range(args.runs):
    runs.append(time_run(problems, configs, args.rounds, f"run {run + 1}/{args.runs}"))
    if torch:
      torch_runs.append(time_torch(torch, rounds=args.rounds))
      for key, value in torch_runs[-1].items():
        print(f"{key:42s} {value:8.3f}")
  results: dict[str, Any] = {
    "command": "python -m benchmarks.overhead " + " ".join(sys.argv[1:]),
    "device": f"{device.device_kind} ({device.platform})",
    "machine": platform.processor() or platform.machine(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "rounds": args.rounds,
    "rows": summarize(runs),
    "runs": runs,
  }
  if torch_runs:
    results["torch"] = summarize_torch(torch_runs)
    results["torch_runs"] = torch_runs
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
  main()
