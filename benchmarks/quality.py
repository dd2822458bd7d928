"""Does GeN find a learning rate as good as a tuned one?  Four offline problems.

Problems (data ship with scikit-learn or Python; nothing is downloaded):

* ``cnn``: a small CNN on the digits images, batch 64;
* ``mlp``: an MLP regression on the diabetes data, full batch;
* ``convex``: logistic regression on the breast-cancer data, batch 32;
* ``lm``: a one-layer character transformer on the Python standard library's
  own source text, batch 32.

Methods: GeN-SGD, GeN-SGD-momentum, GeN-AdamW (library defaults; ``value_fn``
on an independent batch, as recommended), GeN-AdamW with the paper's
horizon-aware cosine ``multiplier``, a 9-point log grid (1e-4 ... 1) of
constant learning rates for SGD-momentum and AdamW, and the learning-rate-free
peers in optax.  Every seed and grid point uses the same batches; one jitted
step per method and problem.

Output: per problem and method the final training loss (full training set,
mean over seeds), the held-out metric, the rank; the mean rank; a figure per
problem; and a JSON file.

Run: ``python benchmarks/quality.py --out benchmarks/results`` (about 15 minutes
on 2 CPU cores); ``--quick`` is the smoke test the suite runs.
"""

import argparse
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from models import TransformerLM
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import gen_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GRID = np.logspace(-4, 0, 9)


class Problem(NamedTuple):
  """A model, its data and its metrics."""

  name: str
  init: Callable[[jax.Array], Any]  # key -> params
  loss: Callable[[Any, Any], jax.Array]  # (params, batch) -> scalar
  train: Any  # (x, y) arrays
  test: Any
  metric: Callable[[Any, Any], jax.Array]  # (params, data) -> held-out metric
  metric_name: str
  batch_size: int | None  # None: full batch


def _split(x, y, seed=0):
  x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.25, random_state=seed
  )
  return (jnp.asarray(x_train), jnp.asarray(y_train)), (
    jnp.asarray(x_test),
    jnp.asarray(y_test),
  )


def _classifier(module: nn.Module, x_shape) -> tuple[Callable, Callable, Callable]:
  def init(key):
    return module.init(key, jnp.zeros((1, *x_shape)))

  def loss(params, batch):
    x, y = batch
    logits = module.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def accuracy(params, data):
    x, y = data
    return jnp.mean(jnp.argmax(module.apply(params, x), -1) == y)

  return init, loss, accuracy


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Conv(16, (3, 3))(x))
    x = nn.avg_pool(nn.gelu(nn.Conv(32, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.gelu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


class RegressionMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(64)(x))
    x = nn.tanh(nn.Dense(64)(x))
    return nn.Dense(1)(x)[:, 0]


def cnn_problem() -> Problem:
  x, y = load_digits(return_X_y=True)
  train, test = _split((x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32), y)
  init, loss, accuracy = _classifier(SmallCNN(), (8, 8, 1))
  return Problem("cnn", init, loss, train, test, accuracy, "test accuracy", 64)


def mlp_problem() -> Problem:
  x, y = load_diabetes(return_X_y=True)
  x = StandardScaler().fit_transform(x).astype(np.float32)
  y = ((y - y.mean()) / y.std()).astype(np.float32)
  train, test = _split(x, y)
  module = RegressionMLP()

  def loss(params, batch):
    return jnp.mean((module.apply(params, batch[0]) - batch[1]) ** 2)

  return Problem(
    "mlp",
    lambda key: module.init(key, jnp.zeros((1, 10))),
    loss,
    train,
    test,
    loss,
    "test MSE",
    None,
  )


def convex_problem() -> Problem:
  x, y = load_breast_cancer(return_X_y=True)
  x = StandardScaler().fit_transform(x).astype(np.float32)
  train, test = _split(x, y)

  def init(key):
    del key  # convex: one optimum, start at zero
    return {"w": jnp.zeros(30), "b": jnp.zeros(())}

  def loss(params, batch):
    logits = batch[0] @ params["w"] + params["b"]
    return optax.sigmoid_binary_cross_entropy(logits, batch[1]).mean()

  def accuracy(params, data):
    return jnp.mean(((data[0] @ params["w"] + params["b"]) > 0) == data[1])

  return Problem("convex", init, loss, train, test, accuracy, "test accuracy", 32)


def lm_problem(length: int = 32, chars: int = 60_000) -> Problem:
  # The text: Python's own standard library sources, which ship with Python.
  text = inspect.getsource(os) + inspect.getsource(argparse) + inspect.getsource(json)
  codes = np.frombuffer(text[:chars].encode("ascii", "replace"), np.uint8) % 128
  windows = np.lib.stride_tricks.sliding_window_view(codes, length + 1)[:: length // 2]
  train, test = _split(windows.astype(np.int32), np.zeros(len(windows)))
  module = TransformerLM(vocab=128, dim=64, layers=1, heads=4, length=length)

  def loss(params, batch):
    tokens = batch[0]
    logits = module.apply(params, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  return Problem(
    "lm",
    lambda key: module.init(key, jnp.zeros((1, length), jnp.int32)),
    loss,
    train,
    test,
    loss,
    "test loss (nats/char)",
    32,
  )


PROBLEMS = {
  "cnn": cnn_problem,
  "mlp": mlp_problem,
  "convex": convex_problem,
  "lm": lm_problem,
}


class Method(NamedTuple):
  """An optimizer to compare; ``make(lr)`` builds it (lr ignored if no grid)."""

  name: str
  make: Callable[[Any], optax.GradientTransformation]
  family: str  # "gen", "grid-sgdm", "grid-adamw", "peer"
  needs_value_fn: bool = False
  needs_value: bool = False
  eval_params: Callable[[Any, Any], Any] | None = None  # (state, params) -> params


# The optimizers GeN wraps, at inner learning rate 1 (α is then the rate).
GEN_INNERS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "sgd": lambda: optax.sgd(1.0),
  "sgd-momentum": lambda: optax.sgd(1.0, momentum=0.9),
  "adamw": lambda: optax.adamw(1.0, weight_decay=1e-4),
}


def methods(steps: int) -> list[Method]:
  def gen(inner, **settings):
    return lambda lr: gen_optax.gen(GEN_INNERS[inner](), **settings)

  return [
    Method("GeN-SGD", gen("sgd"), "gen", needs_value_fn=True),
    Method("GeN-SGD-momentum", gen("sgd-momentum"), "gen", needs_value_fn=True),
    Method("GeN-AdamW", gen("adamw"), "gen", needs_value_fn=True),
    # The paper's horizon-aware variant: the step is m(t)·α·u, m a cosine.
    Method(
      "GeN-AdamW, cosine multiplier",
      gen("adamw", multiplier=optax.cosine_decay_schedule(1.0, steps)),
      "gen",
      needs_value_fn=True,
    ),
    Method(
      "SGD-momentum grid",
      optax.inject_hyperparams(lambda learning_rate: optax.sgd(learning_rate, 0.9)),
      "grid-sgdm",
    ),
    Method(
      "AdamW grid",
      optax.inject_hyperparams(
        lambda learning_rate: optax.adamw(learning_rate, weight_decay=1e-4)
      ),
      "grid-adamw",
    ),
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


def _batch_indices(problem: Problem, steps: int, seed: int) -> np.ndarray:
  """Per step, the gradient's batch and an independent one for value_fn."""
  n = len(problem.train[0])
  size = problem.batch_size or n
  rng = np.random.default_rng(seed)
  if problem.batch_size is None:
    return np.broadcast_to(np.arange(n), (steps, 2, n))
  return np.stack(
    [[rng.choice(n, size, replace=False) for _ in range(2)] for _ in range(steps)]
  )


def train(problem: Problem, method: Method, steps: int, seeds: int) -> dict[str, Any]:
  """Runs every (seed, learning rate) of a method at once; returns histories."""
  lrs = GRID if method.family.startswith("grid") else np.array([np.nan])
  indices = np.stack([_batch_indices(problem, steps, s) for s in range(seeds)])

  def init(seed: jax.Array, lr: jax.Array):
    params = problem.init(jax.random.key(seed))
    return params, method.make(lr).init(params)

  def step(params, state, lr: jax.Array, idx_t: jax.Array):
    tx = method.make(lr)
    batch = jax.tree.map(lambda a: a[idx_t[0]], problem.train)
    fresh = jax.tree.map(lambda a: a[idx_t[1]], problem.train)
    value, grads = jax.value_and_grad(problem.loss)(params, batch)
    extra: dict[str, Any] = {}
    if method.needs_value_fn:
      extra["value_fn"] = lambda p: problem.loss(p, fresh)
    if method.needs_value:
      extra["value"] = value
    updates, state = tx.update(grads, state, params, **extra)
    params = optax.apply_updates(params, updates)
    lr_t = (
      optax.tree.get(state, "learning_rate")
      if method.family == "gen"
      else jnp.asarray(jnp.nan)
    )
    return params, state, value, lr_t

  def finish(params, state):
    if method.eval_params is not None:
      params = method.eval_params(state, params)
    return problem.loss(params, problem.train), problem.metric(params, problem.test)

  # Runs one after the other through one jitted step (lr is an argument: one
  # compilation per method). Neither lax.scan nor vmap: XLA:CPU runs convolutions
  # inside loop bodies several times slower (jax-ml/jax#12868), and vmapping
  # a convolution over parameters turns it into a slow grouped convolution.
  init_jit, step_jit, finish_jit = jax.jit(init), jax.jit(step), jax.jit(finish)
  start = time.perf_counter()
  shape = (seeds, len(lrs))
  final, metric = np.zeros(shape), np.zeros(shape)
  losses, lr_trace = np.zeros((*shape, steps)), np.zeros((*shape, steps))
  for seed in range(seeds):
    for j, lr in enumerate(jnp.asarray(lrs, jnp.float32)):
      params, state = init_jit(jnp.asarray(seed), lr)
      values, rates = [], []
      for t in range(steps):  # indices stay on the host: no per-step dispatch
        params, state, value, lr_t = step_jit(params, state, lr, indices[seed, t])
        values.append(value)
        rates.append(lr_t)
      final[seed, j], metric[seed, j] = finish_jit(params, state)
      losses[seed, j], lr_trace[seed, j] = np.asarray(values), np.asarray(rates)
  seconds = time.perf_counter() - start
  final = np.where(np.isfinite(final), final, np.inf)  # (seeds, lrs)
  return {
    "lrs": lrs,
    "losses": np.asarray(losses),  # (seeds, lrs, steps) minibatch losses
    "lr_trace": np.asarray(lr_trace),
    "final": final,
    "metric": np.asarray(metric),
    "seconds": seconds,
  }


def summarize(problem: Problem, results: dict[str, dict[str, Any]]) -> list[dict]:
  """One row per method: grids report their best learning rate."""
  rows = []
  for name, r in results.items():
    mean_final = r["final"].mean(axis=0)  # over seeds, per lr
    best = int(np.argmin(mean_final))
    rows.append(
      {
        "problem": problem.name,
        "method": (
          name if len(r["lrs"]) == 1 else f"{name} (best lr={r['lrs'][best]:.0e})"
        ),
        "family": name,
        "final_loss": float(mean_final[best]),
        "final_loss_seeds": r["final"][:, best].tolist(),
        "metric": float(r["metric"][:, best].mean()),
        "best_lr": None if len(r["lrs"]) == 1 else float(r["lrs"][best]),
        "seconds": r["seconds"],
      }
    )
  order = np.argsort([row["final_loss"] for row in rows], kind="stable")
  for rank, i in enumerate(order, start=1):
    rows[i]["rank"] = rank
  return rows


def plot(problem: Problem, results: dict[str, dict[str, Any]], rows, out: Path) -> Path:
  fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
  window = 10
  for row in sorted(rows, key=lambda r: r["rank"]):
    r = results[row["family"]]
    best = int(np.argmin(r["final"].mean(axis=0)))
    curve = r["losses"][:, best].mean(axis=0)
    curve = np.convolve(curve, np.ones(window) / window, mode="valid")
    style = "-" if row["family"].startswith("GeN") else ":"
    ax_loss.semilogy(curve, style, label=f"{row['rank']}. {row['method']}")
    if row["family"].startswith("GeN"):
      ax_lr.semilogy(r["lr_trace"][:, 0].mean(axis=0), label=row["family"])
  for name in ("AdamW grid", "SGD-momentum grid"):
    best_lr = next(r["best_lr"] for r in rows if r["family"] == name)
    ax_lr.axhline(best_lr, ls="--", color="gray" if "Adam" in name else "k", lw=1)
    ax_lr.annotate(f"best {name}", (0, best_lr), fontsize=7, va="bottom")
  ax_loss.set(xlabel="step", ylabel="minibatch loss (moving mean)", title=problem.name)
  ax_loss.legend(fontsize=6, ncol=2)
  ax_lr.set(xlabel="step", ylabel="learning rate", title="GeN's α vs best grid rate")
  ax_lr.legend(fontsize=7)
  fig.tight_layout()
  path = out / f"quality-{problem.name}.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--problems", nargs="+", default=None, choices=PROBLEMS)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--out", type=Path, default=Path("outputs/quality"))
  args = parser.parse_args()
  if args.quick:
    args.steps, args.seeds = 3, 1
    args.problems = args.problems or ["convex", "mlp"]
  args.problems = args.problems or list(PROBLEMS)
  args.out.mkdir(parents=True, exist_ok=True)
  all_rows = []
  for name in args.problems:
    problem = PROBLEMS[name]()
    results = {
      m.name: train(problem, m, args.steps, args.seeds) for m in methods(args.steps)
    }
    rows = summarize(problem, results)
    all_rows.extend(rows)
    print(f"\n{problem.name}: {args.steps} steps, {args.seeds} seeds")
    for row in sorted(rows, key=lambda r: r["rank"]):
      print(
        f"  {row['rank']:2d}. {row['method']:36s} train {row['final_loss']:.4g}"
        f"  {problem.metric_name} {row['metric']:.4g}  ({row['seconds']:.0f}s)"
      )
    print(f"  figure: {plot(problem, results, rows, args.out)}")

  families = sorted({r["family"] for r in all_rows})
  mean_rank = {
    f: float(np.mean([r["rank"] for r in all_rows if r["family"] == f]))
    for f in families
  }
  print("\nmean rank over problems:")
  for family in sorted(families, key=mean_rank.get):
    print(f"  {mean_rank[family]:5.2f}  {family}")
  gap = {}
  for name in args.problems:
    rows = {r["family"]: r for r in all_rows if r["problem"] == name}
    gap[name] = rows["GeN-AdamW"]["final_loss"] / rows["AdamW grid"]["final_loss"]
  print("GeN-AdamW final loss / best grid AdamW:")
  for name, ratio in gap.items():
    print(f"  {name:8s} {ratio:.2f}")
  (args.out / "quality.json").write_text(
    json.dumps(
      {
        "steps": args.steps,
        "seeds": args.seeds,
        "jax": jax.__version__,
        "optax": optax.__version__,
        "rows": all_rows,
        "mean_rank": mean_rank,
        "gen_adamw_over_best_adamw": gap,
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  main()
