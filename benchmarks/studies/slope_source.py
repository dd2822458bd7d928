"""Which slope should GeN use at small batch sizes? This decides `slope_from`.

Trains a digits MLP with GeN-Adam at batch 64 and compares final full-data
training losses for three ways of feeding slope and curvature:

* ``value_fn`` on a fresh batch, slope from ``value_fn``   (the default)
* ``value_fn`` on the gradient's batch (slope from either: they are equal there)
* ``value_fn`` on a fresh batch, slope ⟨g, u⟩ from the gradient's batch

Run: ``python -m benchmarks.studies.slope_source --out
benchmarks/results/study-slope-source.json`` (about a minute on 2 CPU cores).
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gen_optax
from benchmarks import digits


def train(variant: str, seed: int, steps: int, batch_size: int) -> float:
  x, y = digits.load()
  x, y = jnp.asarray(x), jnp.asarray(y)
  slope_from = (
    "gradient" if variant == "fresh curvature, gradient slope" else "value_fn"
  )
  tx = gen_optax.gen(
    optax.adam(1.0), measure_along="current_update", slope_from=slope_from
  )
  params = digits.init(jax.random.key(seed), 128)  # ReLU units
  state = tx.init(params)
  step = digits.train_step(tx, digits.loss)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    i = rng.choice(len(x), batch_size, replace=False)
    j = rng.choice(len(x), batch_size, replace=False)
    batch = (x[i], y[i])
    probe = batch if variant == "gradient's batch" else (x[j], y[j])
    params, state, _ = step(params, state, batch, probe)
  return float(digits.loss(params, (x, y)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", type=Path, default=None, help="a JSON file")
  args = parser.parse_args()
  variants = (
    "fresh batch (default)",
    "gradient's batch",
    "fresh curvature, gradient slope",
  )
  print(f"digits MLP, GeN-Adam, batch {args.batch_size}, {args.steps} steps")
  print(f"{'variant':34s} final train loss per seed      mean")
  rows = []
  for variant in variants:
    losses = [train(variant, s, args.steps, args.batch_size) for s in range(args.seeds)]
    cells = " ".join(f"{v:.4f}" for v in losses)
    print(f"{variant:34s} {cells:28s} {np.mean(losses):.4f}")
    rows.append({"variant": variant, "final_losses": losses})
  if args.out:
    settings = {"steps": args.steps, "batch_size": args.batch_size}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
