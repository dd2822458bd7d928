"""The seed project's own demo, by the seed's ``ExactGen`` and gen_optax side by side.

The problem is the seed's ``src/examples/fully_connected/exact_gen.py``:
y = Ax + b + 0.1·noise, 1000 samples of dimension 10, an MLP 10-64-32-1 with
ReLU, mean squared error, batch 32 (the last batch of an epoch has 8), 200
epochs, float64, the seed's learning-rate clamp [0, 0.1].  Data, initial
weights and batch order come from PyTorch's generator seeded as the demo
seeds it (seed 11, the demo's own; more seeds for the spread), and are shared
by every method:

* the seed's PyTorch ``ExactGen`` around ``torch.optim.SGD`` and
  ``torch.optim.AdamW`` (their default settings, as the demo builds them;
  the seed steps the inner optimizer twice per step, as it does);
* ``gen_optax.gen`` with its defaults around ``optax.sgd(1.0)`` and
  ``optax.adamw(1.0, weight_decay=1e-2)`` (PyTorch AdamW's defaults), one
  batch per step, ``value_fn`` on the gradient's own batch (as the seed
  measures), and the same with the seed's clamp ``max_learning_rate=0.1``;
* for scale, the same inner optimizers at the best constant rate of a
  7-point grid 1e-3 ... 1 (half decades), chosen per seed on the final loss.

Output: the final MSE on all 1000 samples per method and seed (the noise
floor is 0.01), saved as JSON; ``report.py`` renders the table in
docs/benchmarks.md.

Run: ``python -m benchmarks.seed_demo --seed-project PATH --out
benchmarks/results/seed-demo.json`` with PATH the seed project's folder and
PyTorch installed (``pip install -e ".[bench-torch]"``); about 10 minutes
on 2 CPU cores.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gen_optax

jax.config.update("jax_enable_x64", True)

GRID = np.logspace(-3, 0, 7)
EPOCHS, BATCH, SAMPLES, DIM = 200, 32, 1000, 10
INNERS = {
  "SGD": lambda lr: optax.sgd(lr),
  "AdamW": lambda lr: optax.adamw(lr, weight_decay=1e-2),
}


def seed_problem(seed: int, seed_project: Path) -> dict[str, Any]:
  """The demo's data, initial weights and batch order, drawn as the demo draws."""
  import torch

  sys.path.insert(0, str(seed_project))  # a folder of sources, not a package
  from src.examples.common import set_seed
  from src.examples.fully_connected.fully_connected import FullyConnected

  torch.set_default_dtype(torch.float64)
  set_seed(seed)
  # The demo's SyntheticRegressionDataset, drawn in its order (its module
  # does not import outside the seed's own layout, so it is redrawn here).
  a, b = torch.randn(1, DIM), torch.randn(1)
  x = torch.randn(SAMPLES, DIM)
  y = torch.nn.functional.linear(x, a, b)
  y = y + 0.1 * torch.randn_like(y)
  dataset = torch.utils.data.TensorDataset(x, y)
  loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
  model = FullyConnected(DIM, [64, 32], 1, 0.0, False)
  # The demo's batches: nothing else draws from the generator during its
  # training, so the sampler's epochs can be drawn up front.
  batches = [np.asarray(rows) for _ in range(EPOCHS) for rows in loader.batch_sampler]
  weights = [
    (layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())
    for layer in model.layers
    if isinstance(layer, torch.nn.Linear)
  ]
  return {
    "x": x.numpy(),
    "y": y.numpy()[:, 0],
    "batches": batches,
    "weights": weights,
    "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
  }


def run_seed_exact_gen(
  problem: dict, inner: str, seed_project: Path
) -> tuple[float, list[float]]:
  """The seed's ExactGen, as its demo trains; returns (final MSE, lr per epoch)."""
  import torch

  sys.path.insert(0, str(seed_project))  # a folder of sources, not a package
  from src.examples.fully_connected.fully_connected import FullyConnected
  from src.generalized_newtons_method import ExactGen, make_gen_optimizer

  warnings.filterwarnings("ignore")  # functorch and jaxtyping deprecations
  model = FullyConnected(DIM, [64, 32], 1, 0.0, False)
  model.load_state_dict(problem["state_dict"])
  base = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW}[inner]
  optimizer = make_gen_optimizer(base, model.parameters())
  criterion = torch.nn.MSELoss()
  scheduler = ExactGen(optimizer, model, criterion, 0.0, 0.1)
  x, y = torch.from_numpy(problem["x"]), torch.from_numpy(problem["y"])[:, None]
  rates = []
  model.train()
  for t, rows in enumerate(problem["batches"]):
    xb, yb = x[rows], y[rows]
    optimizer.zero_grad()
    criterion(model(xb), yb).backward()
    scheduler.step(xb, yb)
    optimizer.step()
    if (t + 1) % (len(problem["batches"]) // EPOCHS) == 0:
      rates.append(scheduler.get_last_lr()[0])
  with torch.no_grad():
    final = float(criterion(model(x), y))
  return final, rates


def mlp(params: list, x: jax.Array) -> jax.Array:
  """The seed's FullyConnected(10, [64, 32], 1) in PyTorch's weight layout."""
  for w, b in params[:-1]:
    x = jax.nn.relu(x @ w.T + b)
  w, b = params[-1]
  return (x @ w.T + b)[:, 0]


def padded_batches(problem: dict) -> tuple[np.ndarray, np.ndarray]:
  """(steps, BATCH) row indices and 0/1 weights of the demo's batches.

  The short last batch of each epoch is padded with weight 0, so that every
  step has one shape and the weighted mean is that batch's MSE exactly.
  """
  rows = np.zeros((len(problem["batches"]), BATCH), np.int32)
  mask = np.zeros((len(problem["batches"]), BATCH))
  for t, b in enumerate(problem["batches"]):
    rows[t, : len(b)], mask[t, : len(b)] = b, 1.0
  return rows, mask


def run_optax(
  problem: dict, make_tx: Any, lrs: np.ndarray, gen: bool
) -> tuple[np.ndarray, np.ndarray]:
  """Trains one optax optimizer per rate (vmapped); returns (final MSE, α per epoch)."""
  x, y = jnp.asarray(problem["x"]), jnp.asarray(problem["y"])
  rows, mask = (jnp.asarray(a) for a in padded_batches(problem))
  params0 = [(jnp.asarray(w), jnp.asarray(b)) for w, b in problem["weights"]]

  def batch_loss(params, rows_t, mask_t):
    residual = mlp(params, x[rows_t]) - y[rows_t]
    return jnp.sum(mask_t * residual**2) / jnp.sum(mask_t)

  def run(lr):
    tx = make_tx(lr)

    def step(carry, batch):
      params, state = carry
      loss = lambda p: batch_loss(p, *batch)  # noqa: E731
      grads = jax.grad(loss)(params)
      extra = {"value_fn": loss} if gen else {}
      updates, state = tx.update(grads, state, params, **extra)
      rate = gen_optax.learning_rate(state) if gen else lr
      return (optax.apply_updates(params, updates), state), rate

    (params, _), rates = jax.lax.scan(step, (params0, tx.init(params0)), (rows, mask))
    final = jnp.mean((mlp(params, x) - y) ** 2)
    return final, rates.reshape(EPOCHS, -1)[:, -1]

  final, rates = jax.jit(jax.vmap(run))(jnp.asarray(lrs))
  return np.asarray(final), np.asarray(rates)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--seed-project", type=Path, required=True, help="the seed project's folder"
  )
  parser.add_argument(
    "--seeds", type=int, nargs="+", default=[11, 0, 1, 2, 3], help="11: the demo's"
  )
  parser.add_argument("--out", type=Path, default=Path("outputs/seed-demo.json"))
  parser.add_argument(
    "--seed-rows",
    type=Path,
    default=None,
    help="reuse the seed ExactGen rows of an earlier result (they do not depend"
    " on gen_optax); the problem is still drawn from the seed project",
  )
  args = parser.parse_args()
  reused = {}
  if args.seed_rows is not None:
    reused = {
      (r["seed"], r["inner"]): r
      for r in json.loads(args.seed_rows.read_text())["rows"]
      if r["method"] == "seed ExactGen"
    }
  rows = []
  for seed in args.seeds:
    problem = seed_problem(seed, args.seed_project)
    for inner, make in INNERS.items():
      start = time.perf_counter()
      if (seed, inner) in reused:
        row = reused[(seed, inner)]
        results = {
          "seed ExactGen": (row["final_mse"], row["rate_per_epoch"], row["seconds"])
        }
      else:
        final, rates = run_seed_exact_gen(problem, inner, args.seed_project)
        results = {"seed ExactGen": (final, rates, time.perf_counter() - start)}
      for name, settings in {
        "gen_optax defaults": {},
        "gen_optax, the seed's clamp (max 0.1)": {"max_learning_rate": 0.1},
      }.items():
        start = time.perf_counter()
        tx = gen_optax.gen(make(1.0), **settings)
        final, rates = run_optax(problem, lambda lr, tx=tx: tx, np.zeros(1), gen=True)
        seconds = time.perf_counter() - start
        results[name] = (float(final[0]), rates[0].tolist(), seconds)
      start = time.perf_counter()
      finals, _ = run_optax(problem, make, GRID, gen=False)
      best = int(np.argmin(np.where(np.isfinite(finals), finals, np.inf)))
      results["best constant (7-point grid)"] = (
        float(finals[best]),
        [float(GRID[best])] * EPOCHS,
        time.perf_counter() - start,
      )
      for method, (final, rates, seconds) in results.items():
        rows.append(
          {
            "seed": seed,
            "inner": inner,
            "method": method,
            "final_mse": final,
            "rate_per_epoch": rates,
            "seconds": seconds,
          }
        )
        print(
          f"seed {seed:2d} {inner:5s} {method:40s} final MSE {final:.4g}"
          f"  last lr {rates[-1]:.3g}  ({seconds:.0f}s)",
          flush=True,
        )
  import torch

  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(
    json.dumps(
      {
        "command": "python -m benchmarks.seed_demo --seed-project SEED --seeds "
        + " ".join(map(str, args.seeds))
        + f" --out {args.out}"
        + (f" --seed-rows {args.seed_rows.name}" if args.seed_rows else ""),
        "problem": "seed demo: y = Ax + b + 0.1 noise, 1000 x 10, MLP 10-64-32-1 "
        "ReLU, MSE, batch 32, 200 epochs, float64; noise floor 0.01",
        "grid": GRID.tolist(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "torch": torch.__version__,
        "rows": rows,
      },
      indent=1,
    )
  )


if __name__ == "__main__":
  main()
