"""A character-level transformer LM, GeN-AdamW against tuned AdamW (Flax Linen).

The text is Python's own standard library source, which ships with every
Python: no download.  The model is a small decoder-only transformer in Flax
Linen, trained with ``TrainState`` and ``gen_optax.linen_apply_gradients``.
AdamW's rate is the best of a small grid run first (``--grid``), so the
comparison is against a tuned baseline.

Run:  python examples/char_transformer.py --steps 400 --out outputs/char_lm
"""

import argparse
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax.training import train_state

import gen_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class Block(nn.Module):
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(self.heads)(h, h, mask=mask)
    h = nn.LayerNorm()(x)
    return x + nn.Dense(self.dim)(nn.gelu(nn.Dense(4 * self.dim)(h)))


class CharLM(nn.Module):
  vocab: int = 128
  dim: int = 64
  layers: int = 2
  heads: int = 4
  length: int = 64

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.dim)(tokens)
    x = x + self.param(
      "position", nn.initializers.normal(0.02), (self.length, self.dim)
    )
    for _ in range(self.layers):
      x = Block(self.dim, self.heads)(x)
    return nn.Dense(self.vocab)(nn.LayerNorm()(x))


def corpus(length: int) -> tuple[np.ndarray, np.ndarray]:
  """Windows of length+1 ASCII codes from stdlib sources; a 90/10 split."""
  text = "".join(inspect.getsource(m) for m in (os, argparse, json, inspect))
  codes = np.frombuffer(text.encode("ascii", "replace"), np.uint8) % 128
  windows = np.lib.stride_tricks.sliding_window_view(codes, length + 1)[:: length // 2]
  split = int(0.9 * len(windows))
  return windows[:split].astype(np.int32), windows[split:].astype(np.int32)


def make_loss(model: CharLM):
  def loss(params, tokens):
    logits = model.apply({"params": params}, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  return loss


def train(
  tx: optax.GradientTransformation, args, data, uses_gen: bool
) -> dict[str, Any]:
  train_windows, test_windows = data
  model = CharLM(length=args.length)
  loss = make_loss(model)
  params = model.init(jax.random.key(args.seed), train_windows[:1, :-1])["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def step(state, batch):
    value, grads = jax.value_and_grad(loss)(state.params, batch)
    if uses_gen:
      # One batch: GeN measures along the previous step on this one.
      state = gen_optax.linen_apply_gradients(
        state, grads=grads, value_fn=lambda p: loss(p, batch)
      )
    else:
      state = state.apply_gradients(grads=grads)
    return state, value

  rng = np.random.default_rng(args.seed)
  history: dict[str, list[float]] = {"loss": [], "lr": []}
  start = time.perf_counter()
  for _ in range(args.steps):
    i = rng.choice(len(train_windows), args.batch_size)
    state, value = step(state, train_windows[i])
    history["loss"].append(float(value))
    if uses_gen:
      history["lr"].append(float(state.opt_state.learning_rate))
  seconds = time.perf_counter() - start
  test_loss = float(jax.jit(loss)(state.params, test_windows[:512]))
  return {"history": history, "test_loss": test_loss, "seconds": seconds}


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument(
    "--grid", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="AdamW rates"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=Path, default=Path("outputs/char_lm"))
  args = parser.parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  data = corpus(args.length)

  results: dict[str, Any] = {}
  results["GeN-AdamW"] = train(
    gen_optax.gen(optax.adamw(1.0, weight_decay=1e-2)), args, data, uses_gen=True
  )
  grid = {
    lr: train(optax.adamw(lr, weight_decay=1e-2), args, data, False) for lr in args.grid
  }
  best_lr = min(grid, key=lambda lr: grid[lr]["test_loss"])
  results[f"AdamW lr={best_lr:g} (best of grid)"] = grid[best_lr]

  fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
  for name, r in results.items():
    smooth = np.convolve(r["history"]["loss"], np.ones(20) / 20, mode="valid")
    ax_loss.plot(smooth, label=f"{name}: test {r['test_loss']:.3f}")
    print(f"{name:34s} test loss {r['test_loss']:.4f} nats/char ({r['seconds']:.1f}s)")
  ax_loss.set(xlabel="step", ylabel="training loss (moving mean)", title="char LM")
  ax_loss.legend()
  ax_lr.semilogy(results["GeN-AdamW"]["history"]["lr"], label="GeN α")
  ax_lr.axhline(best_lr, ls="--", color="gray", label="best AdamW rate")
  ax_lr.set(xlabel="step", ylabel="learning rate")
  ax_lr.legend()
  fig.tight_layout()
  path = args.out / "char_lm.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  (args.out / "char_lm.json").write_text(
    json.dumps({k: {"test_loss": v["test_loss"]} for k, v in results.items()})
  )
  print(f"saved {path}")
  return results


if __name__ == "__main__":
  main()
