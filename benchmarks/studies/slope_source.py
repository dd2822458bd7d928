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
from sklearn.datasets import load_digits

import gen_optax


def mlp_init(key):
  k1, k2 = jax.random.split(key)
  return {
    "w1": jax.random.normal(k1, (64, 128)) / 8,
    "b1": jnp.zeros(128),
    "w2": jax.random.normal(k2, (128, 10)) / np.sqrt(128),
    "b2": jnp.zeros(10),
  }


def loss_fn(params, x, y):
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(variant: str, seed: int, steps: int, batch_size: int) -> float:
  x, y = load_digits(return_X_y=True)
  x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)
  slope_from = (
    "gradient" if variant == "fresh curvature, gradient slope" else "value_fn"
  )
  tx = gen_optax.gen(
    optax.adam(1.0), measure_along="current_update", slope_from=slope_from
  )
  params = mlp_init(jax.random.key(seed))
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch, probe):
    grads = jax.grad(loss_fn)(params, *batch)
    updates, state = tx.update(
      grads, state, params, value_fn=lambda p: loss_fn(p, *probe)
    )
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    i = rng.choice(len(x), batch_size, replace=False)
    j = rng.choice(len(x), batch_size, replace=False)
    batch = (x[i], y[i])
    probe = batch if variant == "gradient's batch" else (x[j], y[j])
    params, state = step(params, state, batch, probe)
  return float(loss_fn(params, x, y))


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
