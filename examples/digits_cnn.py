"""GeN-AdamW against AdamW on a Flax NNX CNN, on scikit-learn's digits.

The main example: a small CNN learns the 8x8 handwritten digits bundled with
scikit-learn (no download), once with ``gen_optax.gen(optax.adamw(1.0))`` and
with AdamW at each fixed learning rate of a small grid (``--grid``, 1e-3 to
3e-2), all from one batch per step (GeN's ``value_fn`` sees the gradient's own
batch).  It prints a summary (final training loss, test accuracy, time per
step) of GeN, of AdamW at ``--lr`` (a common default, 3e-3) and of AdamW at the
grid's best rate (lowest final training loss, the quantity GeN's step
minimises; chosen with hindsight, which GeN does not get), and saves two
figures: the loss curves and GeN's learning rate over training.

Run:  python examples/digits_cnn.py --steps 300 --out outputs/digits_cnn
"""

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import gen_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class CNN(nnx.Module):
  """Two 3x3 convolutions, average pooling and two dense layers."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
    self.dense1 = nnx.Linear(32 * 4 * 4, 64, rngs=rngs)
    self.dense2 = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.gelu(self.conv1(x))
    x = nnx.avg_pool(nnx.gelu(self.conv2(x)), (2, 2), (2, 2))
    x = nnx.gelu(self.dense1(x.reshape(x.shape[0], -1)))
    return self.dense2(x)


def loss_fn(model: CNN, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def load_data(seed: int) -> tuple[Any, Any]:
  """Digits as (N, 8, 8, 1) floats in [0, 1]; a stratified 80/20 split."""
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.2, random_state=seed, stratify=y
  )
  return (jnp.asarray(x_train), jnp.asarray(y_train)), (
    jnp.asarray(x_test),
    jnp.asarray(y_test),
  )


def make_train_step(uses_gen: bool) -> Callable:
  """One jitted step on one batch; GeN's value_fn sees the gradient's batch."""

  @nnx.jit
  def train_step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(loss_fn)(model, *batch)
    if uses_gen:
      # GeN measures along the previous step, which this batch did not shape.
      value_fn = gen_optax.nnx_value_fn(model, loss_fn, *batch)
      optimizer.update(model, grads, value_fn=value_fn)
    else:
      optimizer.update(model, grads)
    return loss

  return train_step


def train(
  name: str, tx: optax.GradientTransformation, args: argparse.Namespace, data
) -> dict[str, Any]:
  (x_train, y_train), (x_test, y_test) = data
  model = CNN(nnx.Rngs(args.seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  uses_gen = name.startswith("GeN")
  train_step = make_train_step(uses_gen)
  full_loss = nnx.jit(loss_fn)
  rng = np.random.default_rng(args.seed)
  history: dict[str, list[float]] = {"step": [], "loss": [], "lr": []}
  times = []
  for step in tqdm(range(args.steps), desc=name, ncols=80):
    i = rng.choice(len(x_train), args.batch_size, replace=False)
    start = time.perf_counter()
    loss = train_step(model, optimizer, (x_train[i], y_train[i]))
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
    if step % args.log_every == 0 or step == args.steps - 1:
      history["step"].append(step)
      history["loss"].append(float(full_loss(model, x_train, y_train)))
      if uses_gen:
        history["lr"].append(float(gen_optax.learning_rate(optimizer.opt_state)))
  accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
  return {
    "name": name,
    "history": history,
    "final_loss": history["loss"][-1],
    "test_accuracy": accuracy,
    "ms_per_step": 1e3 * float(np.median(times[5:] or times)),
  }


def plot(results: list[dict[str, Any]], out: Path) -> list[Path]:
  out.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, r in enumerate(results):
    ax.semilogy(
      r["history"]["step"], r["history"]["loss"], color=f"C{i}", label=r["name"]
    )
  ax.set(xlabel="step", ylabel="training loss (full training set)", title="digits CNN")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  paths = [out / "loss.png"]
  fig.savefig(paths[0], dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  for i, r in enumerate(results):
    if r["history"]["lr"]:
      ax.semilogy(
        r["history"]["step"], r["history"]["lr"], color=f"C{i}", label=f"{r['name']}: α"
      )
    else:
      ax.axhline(r["lr"], ls="--", color=f"C{i}", label=f"{r['name']}: fixed")
  ax.set(xlabel="step", ylabel="learning rate", title="GeN's learning rate α")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  paths.append(out / "learning_rate.png")
  fig.savefig(paths[1], dpi=120)
  plt.close(fig)
  return paths


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300, help="training steps")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument(
    "--mode",
    default="forward-over-reverse",
    choices=["forward-over-reverse", "forward-over-forward", "probes", "one-probe"],
    help="how GeN gets the curvature",
  )
  parser.add_argument("--refresh-every", type=int, default=1, help="GeN lazy refresh")
  parser.add_argument("--lr", type=float, default=3e-3, help="AdamW's default rate")
  parser.add_argument(
    "--grid",
    type=float,
    nargs="+",
    default=[1e-3, 3e-3, 1e-2, 3e-2],
    help="AdamW's rates, the best of which is shown too",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--log-every", type=int, default=10)
  parser.add_argument("--out", type=Path, default=Path("outputs/digits_cnn"))
  args = parser.parse_args(argv)

  data = load_data(args.seed)
  gen_tx = gen_optax.gen(
    optax.adamw(1.0, weight_decay=1e-4),
    mode=args.mode,
    refresh_every=args.refresh_every,
  )
  gen_run = train(f"GeN-AdamW ({args.mode})", gen_tx, args, data)
  adamw = {
    lr: train(f"AdamW lr={lr:g}", optax.adamw(lr, weight_decay=1e-4), args, data)
    for lr in sorted({args.lr, *args.grid})
  }
  for lr, r in adamw.items():
    r["lr"] = lr
  best = min(adamw.values(), key=lambda r: r["final_loss"])
  best["name"] += f" (best of {len(adamw)})"
  results = [gen_run, adamw[args.lr]] + ([best] if best is not adamw[args.lr] else [])
  print("\nAdamW's final training loss by rate: ", end="")
  print(", ".join(f"{lr:g}: {r['final_loss']:.4f}" for lr, r in adamw.items()))
  print(f"\n{'method':36s} {'train loss':>10s} {'test acc':>9s} {'ms/step':>8s}")
  for r in results:
    print(
      f"{r['name']:36s} {r['final_loss']:10.4f} {r['test_accuracy']:9.3f}"
      f" {r['ms_per_step']:8.2f}"
    )
  ratio = results[0]["ms_per_step"] / results[1]["ms_per_step"]
  print(f"GeN step / AdamW step: {ratio:.2f}x")
  for path in plot(results, args.out):
    print(f"saved {path}")
  return results


if __name__ == "__main__":
  main()
