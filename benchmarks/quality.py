"""Does GeN find learning rates as good as tuned ones, on problems it was not tuned on?

Fourteen offline problems of different kinds (``quality_problems.py``), split once
and for all into a *selection* half, on which defaults may be screened, and a
*report* half, on which they are only reported.

Methods, every one on the same batches and seeds:

* GeN-AdamW and GeN-SGD-momentum with the library's defaults, each in the two
  loops users write: ``value_fn`` on the gradient's own batch (the loop written
  first, as optax's line searches take it) and on an independent batch; and
  GeN-AdamW given the run's length (``total_steps``), on the own batch;
* the baselines people tune, for AdamW and SGD-momentum: a 9-point log grid
  (1e-4 ... 1) of constant rates, and a 9-point grid of peak rates with a 5%
  linear warm-up and cosine decay to 0;
* the learning-rate-free peers in optax.

Seeds: 3 per problem, 5 on the long runs (2000 steps), each seed its own
initialisation and batch order, shared by every method.  Long runs are
judged seed by seed: a run *fails* when its final training loss is above its
initial loss or more than 3x the median seed of the best constant rate of its
inner optimizer (AdamW for the peers).

Output, per problem: each method's final training loss per seed and its mean
(full training set; grids at their best rate by the mean), the held-out
metric, the rank among all methods and among the learning-rate-free ones, the
failed seeds; GeN's ratios to the best constant and best cosine rate of its
inner optimizer, as means and per seed; a figure with every seed.  Then per
half: worst and median ratio, the worst seed, failure counts, mean ranks.
Everything goes to ``quality.json``; ``report.py`` renders the tables of
docs/benchmarks.md from it.

Run: ``python -m benchmarks.quality --out benchmarks/results`` (about an hour
on 2 CPU cores); ``--quick`` (a quarter of the steps, 1 seed) is a smoke test
of a few minutes; ``--steps 3`` is the one the suite runs.
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import gen_optax
from benchmarks.quality_problems import QUALITY_PROBLEMS, SPLIT, Problem

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

GRID = np.logspace(-4, 0, 9)
WARMUP_FRACTION = 0.05
FAIL_FACTOR = 3.0  # a run fails above this many times the tuned rate's median seed
LONG = 2000  # steps from which a problem is a long run
SEEDS, LONG_SEEDS = 3, 5  # seeds per problem, and per long problem


class Method(NamedTuple):
  """An optimizer to compare; ``make(lr)`` builds it (lr ignored if no grid)."""

  name: str
  make: Callable[[Any], optax.GradientTransformation]
  family: Literal["gen", "grid", "peer"]
  inner: str | None = None  # the GEN_INNERS key of GeN rows and grids
  schedule: Literal["constant", "cosine"] | None = None  # grids only
  # GeN: which batch value_fn closes over.
  value_fn_batch: Literal["own", "independent"] | None = None
  needs_value: bool = False
  eval_params: Callable[[Any, Any], Any] | None = None  # (state, params) -> params


# The optimizers GeN wraps, at inner learning rate 1 (α is then the rate); the
# grids build the same optimizers with their own rate.
INNERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
  "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
  "sgd-momentum": lambda lr: optax.sgd(lr, momentum=0.9),
}
GEN_INNERS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "sgd": lambda: optax.sgd(1.0),
  **{name: (lambda make=make: make(1.0)) for name, make in INNERS.items()},
}
LABEL = {"adamw": "AdamW", "sgd-momentum": "SGD-m", "sgd": "SGD"}
LOOPS = {"own": "own batch", "independent": "independent batch"}


def warmup_cosine(peak: Any, steps: int) -> optax.Schedule:
  """5% linear warm-up from 0 to ``peak``, then cosine decay to 0."""
  unit = optax.warmup_cosine_decay_schedule(
    0.0, 1.0, max(1, int(WARMUP_FRACTION * steps)), steps, 0.0
  )
  return lambda t: peak * unit(t)  # peak may be traced (one compilation)


def gen_method(inner: str, loop: str, label: str = "", **settings: Any) -> Method:
  """GeN around ``GEN_INNERS[inner]`` with ``value_fn`` on the ``loop`` batch."""
  tx = gen_optax.gen(GEN_INNERS[inner](), **settings)
  return Method(
    f"GeN-{LABEL[inner]}{label} ({LOOPS[loop]})",
    lambda lr: tx,
    "gen",
    inner=inner,
    value_fn_batch=loop,  # type: ignore[arg-type]
  )


def methods(steps: int) -> list[Method]:
  gen_rows = [gen_method(i, loop) for i in INNERS for loop in LOOPS]
  # GeN given the run's length (no rate tuned), against the tuned schedules.
  gen_rows.append(gen_method("adamw", "own", " horizon", total_steps=steps))
  grids = []
  for inner, make in INNERS.items():
    grids.append(Method(f"{LABEL[inner]} constant", make, "grid", inner, "constant"))
    grids.append(
      Method(
        f"{LABEL[inner]} cosine",
        lambda lr, make=make: make(warmup_cosine(lr, steps)),
        "grid",
        inner,
        "cosine",
      )
    )
  peers = [
    Method("prodigy", lambda lr: optax.contrib.prodigy(), "peer"),
    Method("dadapt_adamw", lambda lr: optax.contrib.dadapt_adamw(), "peer"),
    Method("dog", lambda lr: optax.contrib.dog(), "peer"),
    Method("cocob", lambda lr: optax.contrib.cocob(), "peer"),
    Method(
      "mechanize(adam)", lambda lr: optax.contrib.mechanize(optax.adam(1.0)), "peer"
    ),
    Method(
      "schedule_free_adamw",
      lambda lr: optax.contrib.schedule_free_adamw(),  # its default rate
      "peer",
      eval_params=optax.contrib.schedule_free_eval_params,
    ),
    Method(
      "polyak_sgd",
      lambda lr: optax.polyak_sgd(max_learning_rate=1.0),
      "peer",
      needs_value=True,
    ),
  ]
  return gen_rows + grids + peers


def seeds_for(problem: Problem, seeds: int | None = None, quick: bool = False) -> int:
  """``seeds`` if given, else 1 with ``quick``, else 3 (5 for a long run)."""
  if seeds is not None:
    return seeds
  if quick:
    return 1
  return LONG_SEEDS if problem.steps >= LONG else SEEDS


def batch_indices(problem: Problem, steps: int, seed: int) -> np.ndarray:
  """(steps, 2, batch): per step the gradient's batch and an independent one."""
  n = len(problem.train[0])
  if problem.batch_size is None:
    return np.broadcast_to(np.arange(n, dtype=np.int32), (steps, 2, n))
  rng = np.random.default_rng(seed)
  return np.stack(
    [
      [rng.choice(n, problem.batch_size, replace=False) for _ in range(2)]
      for _ in range(steps)
    ]
  ).astype(np.int32)


def train(problem: Problem, method: Method, steps: int, seeds: int) -> dict[str, Any]:
  """Runs every (seed, learning rate) of a method; returns their histories."""
  lrs = GRID if method.family == "grid" else np.array([np.nan])
  indices = np.stack([batch_indices(problem, steps, s) for s in range(seeds)])

  def init(seed: jax.Array, lr: jax.Array):
    params = problem.init(jax.random.key(seed))
    return params, method.make(lr).init(params)

  def step(params, state, lr: jax.Array, idx_t: jax.Array):
    tx = method.make(lr)
    batch, other = (jax.tree.map(lambda a, i=i: a[i], problem.train) for i in idx_t)
    value, grads = jax.value_and_grad(problem.loss)(params, batch)
    extra: dict[str, Any] = {}
    if method.value_fn_batch is not None:
      seen = batch if method.value_fn_batch == "own" else other
      extra["value_fn"] = lambda p: problem.loss(p, seen)
    if method.needs_value:
      extra["value"] = value
    updates, state = tx.update(grads, state, params, **extra)
    params = optax.apply_updates(params, updates)
    rate = state.learning_rate if method.family == "gen" else jnp.asarray(jnp.nan)
    return params, state, value, rate

  def finish(params, state):
    if method.eval_params is not None:
      params = method.eval_params(state, params)
    return problem.loss(params, problem.train), problem.metric(params, problem.test)

  # The loss at each seed's initial params (a failed run ends above it).
  initial = np.asarray(
    [
      jax.jit(lambda s: problem.loss(problem.init(jax.random.key(s)), problem.train))(s)
      for s in range(seeds)
    ]
  )
  start = time.perf_counter()
  seed_of = np.repeat(np.arange(seeds), len(lrs))
  lr_of = jnp.asarray(np.tile(lrs, seeds), jnp.float32)
  if problem.vectorize:
    # All (seed, lr) runs at once: vmap over runs, lax.scan over steps.
    def run(seed, lr, idx):
      params, state = init(seed, lr)

      def body(carry, idx_t):
        params, state, value, rate = step(*carry, lr, idx_t)
        return (params, state), (value, rate)

      (params, state), (values, rates) = jax.lax.scan(body, (params, state), idx)
      return (*finish(params, state), values, rates)

    outputs = jax.jit(jax.vmap(run))(jnp.asarray(seed_of), lr_of, indices[seed_of])
    final, metric, losses, rates = (np.asarray(x) for x in outputs)
  else:
    # One run after another through one jitted step (see Problem.vectorize);
    # the indices stay on the host.
    init_jit, step_jit, finish_jit = jax.jit(init), jax.jit(step), jax.jit(finish)
    final, metric = np.zeros(len(lr_of)), np.zeros(len(lr_of))
    losses, rates = np.zeros((len(lr_of), steps)), np.zeros((len(lr_of), steps))
    for run_index, (seed, lr) in enumerate(zip(seed_of, lr_of, strict=True)):
      params, state = init_jit(jnp.asarray(seed), lr)
      history = []
      for t in range(steps):
        params, state, value, rate = step_jit(params, state, lr, indices[seed, t])
        history.append((value, rate))
      final[run_index], metric[run_index] = finish_jit(params, state)
      losses[run_index], rates[run_index] = np.asarray(history).T
  shape = (seeds, len(lrs))
  final = final.reshape(shape)
  return {
    "lrs": lrs,
    "initial": initial,  # (seeds,)
    "final": np.where(np.isfinite(final), final, np.inf),  # (seeds, lrs)
    "metric": metric.reshape(shape),
    "losses": losses.reshape(*shape, steps),  # minibatch losses
    "rates": rates.reshape(*shape, steps),  # GeN's α
    "seconds": time.perf_counter() - start,
  }


def _rank(rows: list[dict], key: str) -> None:
  order = np.argsort([row["final_loss"] for row in rows], kind="stable")
  for rank, i in enumerate(order, start=1):
    rows[i][key] = rank


def failed(final: np.ndarray, initial: np.ndarray, reference: float) -> np.ndarray:
  """Per seed: the run ended above its initial loss, or above 3x the reference.

  The reference is the median seed of the best constant rate of the same
  inner optimizer (AdamW for the peers): a run 3x worse than a tuned rate's
  typical seed has failed, however good its mean.
  """
  return (final > initial) | (final > FAIL_FACTOR * reference) | ~np.isfinite(final)


def summarize(problem: Problem, runs: dict[str, dict], table: list[Method]) -> list:
  """One row per method (grids at their best rate), ranked, with ratios per seed."""
  rows = []
  for method in table:
    r = runs[method.name]
    mean_final = r["final"].mean(axis=0)  # over seeds, per lr
    best = int(np.argmin(mean_final))
    grid = method.family == "grid"
    rows.append(
      {
        "problem": problem.name,
        "split": problem.split,
        "method": method.name,
        "family": method.family,
        "inner": method.inner,
        "schedule": method.schedule,
        "loop": method.value_fn_batch,
        "final_loss": float(mean_final[best]),
        "final_loss_seeds": r["final"][:, best].tolist(),
        "initial_loss_seeds": r["initial"].tolist(),
        "metric": float(r["metric"][:, best].mean()),
        "best_lr": float(r["lrs"][best]) if grid else None,
        # A best rate on the grid's edge means the grid may be too narrow.
        "best_lr_at_edge": bool(grid and best in (0, len(r["lrs"]) - 1)),
        "seconds": r["seconds"],
      }
    )
  for row in rows:
    if row["family"] == "gen":
      # α at a quarter, half and the end of the run (median over seeds).
      rates = runs[row["method"]]["rates"][:, 0]
      steps = rates.shape[-1]
      row["median_rate_at"] = {
        str(s): float(np.median(rates[:, s - 1]))
        for s in (steps // 4, steps // 2, steps)
      }
  _rank(rows, "rank")
  _rank([row for row in rows if row["family"] != "grid"], "lr_free_rank")

  def grid_row(inner: str, schedule: str) -> dict:
    return next(
      g
      for g in rows
      if g["family"] == "grid" and g["inner"] == inner and g["schedule"] == schedule
    )

  for row in rows:
    inner = row["inner"] or "adamw"  # peers are compared with AdamW
    final = np.asarray(row["final_loss_seeds"])
    for schedule in ("constant", "cosine"):
      best = grid_row(inner, schedule)
      typical = float(np.median(best["final_loss_seeds"]))
      row[f"over_best_{schedule}"] = row["final_loss"] / best["final_loss"]
      # Seed by seed, over the tuned rate's median seed.
      row[f"seed_over_best_{schedule}"] = (final / typical).tolist()
    reference = float(np.median(grid_row(inner, "constant")["final_loss_seeds"]))
    fails = failed(final, np.asarray(row["initial_loss_seeds"]), reference)
    row["failed_seeds"] = [int(i) for i in np.flatnonzero(fails)]
  return rows


def overall(rows: list[dict]) -> dict[str, Any]:
  """Per half ("select", "report", "all") and method: ratios, worst seeds, ranks.

  ``worst_over_best_*`` and ``median_over_best_*`` are over the problems'
  mean ratios; ``worst_seed_over_best_*`` is the worst single seed of any
  problem; ``failures`` counts failed runs (seeds) over all the half's
  problems, out of ``runs``.
  """
  summary: dict[str, Any] = {}
  for half in ("select", "report", "all"):
    chosen = [r for r in rows if half == "all" or r["split"] == half]
    if not chosen:
      continue
    names = list(dict.fromkeys(r["method"] for r in chosen))
    per_method = {}
    for name in names:
      mine = [r for r in chosen if r["method"] == name]
      entry: dict[str, Any] = {
        "mean_rank": float(np.mean([r["rank"] for r in mine])),
        "failures": sum(len(r["failed_seeds"]) for r in mine),
        "runs": sum(len(r["final_loss_seeds"]) for r in mine),
        "failed_problems": sorted({r["problem"] for r in mine if r["failed_seeds"]}),
      }
      if "lr_free_rank" in mine[0]:
        entry["mean_lr_free_rank"] = float(np.mean([r["lr_free_rank"] for r in mine]))
      for schedule in ("constant", "cosine"):
        key = f"over_best_{schedule}"
        worst = max(mine, key=lambda r, k=key: r[k])
        entry[f"worst_{key}"] = worst[key]
        entry[f"worst_problem_{schedule}"] = worst["problem"]
        entry[f"median_{key}"] = float(np.median([r[key] for r in mine]))
        seed_worst = max(mine, key=lambda r, k=key: max(r[f"seed_{k}"]))
        entry[f"worst_seed_{key}"] = max(seed_worst[f"seed_{key}"])
        entry[f"worst_seed_problem_{schedule}"] = seed_worst["problem"]
      per_method[name] = entry
    summary[half] = {
      "problems": list(dict.fromkeys(r["problem"] for r in chosen)),
      "methods": per_method,
    }
  return summary


def plot(problem: Problem, runs: dict, rows: list[dict], steps: int, out: Path) -> Path:
  """Loss and α per seed (thin lines) for GeN, the best grid rates and top peers.

  One legend for both panels, below them, with thick opaque handles: the
  seeds' lines are thin and faint, and a legend drawn with them cannot be
  read at a page's width.
  """
  fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 6.5))
  window = max(1, steps // 40)
  peers = sorted((r for r in rows if r["family"] == "peer"), key=lambda r: r["rank"])
  shown = sorted(
    [r for r in rows if r["family"] != "peer"] + peers[:3], key=lambda r: r["rank"]
  )
  tab20 = plt.get_cmap("tab20").colors  # dark and light pairs: the dark ones first
  colors = dict(
    zip([r["method"] for r in shown], tab20[0::2] + tab20[1::2], strict=False)
  )
  styles = {"gen": "-", "grid": "--", "peer": ":"}
  for row in shown:
    r = runs[row["method"]]
    best = int(np.argmin(r["final"].mean(axis=0)))
    for losses in r["losses"][:, best]:
      curve = np.convolve(losses, np.ones(window) / window)[window - 1 : steps]
      ax_loss.semilogy(
        curve,
        styles[row["family"]],
        color=colors[row["method"]],
        linewidth=0.7,
        alpha=0.6,
      )
  t = np.arange(steps)
  lowest = np.inf
  for row in shown:
    r = runs[row["method"]]
    if row["family"] == "gen":
      for rate in r["rates"][:, 0]:
        lowest = min(lowest, np.nanmin(rate))
        ax_lr.semilogy(rate, color=colors[row["method"]], linewidth=0.7, alpha=0.6)
    elif row["family"] == "grid" and row["inner"] == "adamw":
      rate = row["best_lr"] * np.ones(steps)
      if row["schedule"] == "cosine":
        rate = np.asarray(jax.vmap(warmup_cosine(row["best_lr"], steps))(t))
      ax_lr.semilogy(t, rate, "--", color=colors[row["method"]], linewidth=2)
  ax_lr.set_ylim(bottom=lowest / 10)  # the cosine's tail would squash the rest
  ax_loss.set(
    xlabel="step", ylabel="minibatch loss (moving mean), each seed", title=problem.name
  )
  ax_lr.set(
    xlabel="step",
    ylabel="learning rate",
    title="GeN's α, each seed (solid); the best AdamW rates (dashed)",
  )
  handles = [
    Line2D(
      [],
      [],
      linestyle=styles[row["family"]],
      color=colors[row["method"]],
      linewidth=2.5,
      label=f"{row['rank']}. {row['method']}",
    )
    for row in shown
  ]
  fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=11, frameon=False)
  fig.tight_layout(rect=(0, 0.2, 1, 1))
  path = out / f"quality-{problem.name}.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--problems", nargs="+", default=None, choices=QUALITY_PROBLEMS)
  parser.add_argument("--split", choices=SPLIT, default=None, help="one half only")
  parser.add_argument(
    "--seeds",
    type=int,
    default=None,
    help=f"seeds per problem (default {SEEDS}, {LONG_SEEDS} on runs of {LONG}+ steps)",
  )
  parser.add_argument(
    "--steps", type=int, default=None, help="override every problem's"
  )
  parser.add_argument(
    "--quick", action="store_true", help="1 seed, a quarter of the steps"
  )
  parser.add_argument("--out", type=Path, default=Path("outputs/quality"))
  args = parser.parse_args()
  names = args.problems or (SPLIT[args.split] if args.split else list(QUALITY_PROBLEMS))
  args.out.mkdir(parents=True, exist_ok=True)
  rows: list[dict] = []
  problems = {}
  for name in names:
    problem = QUALITY_PROBLEMS[name]()
    steps = args.steps or (problem.steps // 4 if args.quick else problem.steps)
    seeds = seeds_for(problem, args.seeds, args.quick)
    table = methods(steps)
    runs = {m.name: train(problem, m, steps, seeds) for m in table}
    mine = summarize(problem, runs, table)
    rows.extend(mine)
    problems[name] = {
      "kind": problem.kind,
      "split": problem.split,
      "steps": steps,
      "seeds": seeds,
      "batch_size": problem.batch_size,
      "metric_name": problem.metric_name,
      "figure": plot(problem, runs, mine, steps, args.out).name,
    }
    print(f"\n{name} ({problem.split}): {steps} steps, {seeds} seeds", flush=True)
    for row in sorted(mine, key=lambda r: r["rank"]):
      lr = f" lr {row['best_lr']:.0e}" if row["best_lr"] else ""
      ratios = (
        f"  /best constant {row['over_best_constant']:.2f}"
        f" (worst seed {max(row['seed_over_best_constant']):.2f})"
        f"  /best cosine {row['over_best_cosine']:.2f}"
        if row["family"] == "gen"
        else ""
      )
      fails = f"  FAILED seeds {row['failed_seeds']}" if row["failed_seeds"] else ""
      print(
        f"  {row['rank']:2d}. {row['method']:32s} train {row['final_loss']:.4g}{lr}"
        f"  {problem.metric_name} {row['metric']:.4g}{ratios}{fails}"
        f"  ({row['seconds']:.0f}s)",
        flush=True,
      )
  summary = overall(rows)
  for half, entry in summary.items():
    print(f"\n{half} half ({len(entry['problems'])} problems):")
    for name, stats in sorted(
      entry["methods"].items(), key=lambda kv: kv[1]["mean_rank"]
    ):
      ratios = "".join(
        f"  /best {s}: worst {stats[f'worst_over_best_{s}']:.2f}"
        f" median {stats[f'median_over_best_{s}']:.2f}"
        f" worst seed {stats[f'worst_seed_over_best_{s}']:.2f}"
        for s in ("constant", "cosine")
      )
      print(
        f"  mean rank {stats['mean_rank']:5.2f}  {name}{ratios}"
        f"  failures {stats['failures']}/{stats['runs']}"
      )
  (args.out / "quality.json").write_text(
    json.dumps(
      {
        "command": "python -m benchmarks.quality "
        + " ".join(
          f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
          for k, v in vars(args).items()
          if v not in (None, False) and k != "out"
        ),
        "seeds": {"default": SEEDS, "long": LONG_SEEDS, "override": args.seeds},
        "fail_factor": FAIL_FACTOR,
        "grid": GRID.tolist(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "problems": problems,
        "rows": rows,
        "summary": summary,
      },
      indent=1,
    )
  )


if __name__ == "__main__":
  main()
