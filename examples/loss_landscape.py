"""The loss along the update direction against GeN's quadratic models.

For a digits MLP, at initialisation and after some training, this plots the
real loss L(θ + α·u) over a range of α (u: Adam's update) with the quadratic
models GeN fits to it: the exact one (value, slope and curvature by automatic
differentiation) and the paper's three-probe fit; their minimisers α* are
marked.  The figure explains the method at a glance: α* is where the parabola
bottoms out.

Run:  python examples/loss_landscape.py --out outputs/landscape
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_digits

import gen_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def setup():
  x, y = load_digits(return_X_y=True)
  x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {
    "w1": jax.random.normal(k1, (64, 64)) / 8,
    "b1": jnp.zeros(64),
    "w2": jax.random.normal(k2, (64, 10)) / 8,
    "b2": jnp.zeros(10),
  }

  def loss(p):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    logits = h @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return params, loss


def profile(loss, params, direction, alphas, step_size):
  """The real loss along θ + α·u, and GeN's two quadratic models.

  The probes sit at α = ±step_size, GeN's current learning rate, as in GeN.
  """
  along = jax.jit(
    jax.vmap(lambda a: loss(jax.tree.map(lambda p, u: p + a * u, params, direction)))
  )
  exact = gen_optax.measure_line(loss, params, direction)
  probes = gen_optax.measure_line(
    loss, params, direction, mode="probes", step_size=step_size
  )
  return np.asarray(along(alphas)), exact, probes


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train-steps", type=int, default=25)
  parser.add_argument("--out", type=Path, default=Path("outputs/landscape"))
  args = parser.parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  params, loss = setup()
  inner = optax.adam(1.0)
  tx = gen_optax.gen(inner)
  state = tx.init(params)

  @jax.jit
  def train_step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
    return optax.apply_updates(params, updates), state

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  minimisers = {}
  for ax, (title, steps) in zip(
    axes,
    [("at initialisation", 0), (f"after {args.train_steps} steps", args.train_steps)],
    strict=True,
  ):
    for _ in range(steps):
      params, state = train_step(params, state)
    # The direction GeN would scale next: the inner update at the current state.
    direction, _ = inner.update(jax.grad(loss)(params), state.inner_state, params)
    exact = gen_optax.measure_line(loss, params, direction)
    alphas = np.linspace(0.0, 3 * float(-exact.slope / exact.curvature), 101)
    value, exact, probes = profile(
      loss, params, direction, alphas, step_size=float(state.learning_rate)
    )
    ax.plot(alphas, value, "k", lw=2, label="real loss L(θ + αu)")
    for name, model, style in (("exact", exact, "--"), ("3 probes", probes, ":")):
      fit = model.loss + model.slope * alphas + 0.5 * model.curvature * alphas**2
      alpha_star = float(-model.slope / model.curvature)
      minimisers[f"{name} {title}"] = alpha_star
      ax.plot(
        alphas, fit, style, label=f"quadratic model ({name}), α* = {alpha_star:.3g}"
      )
      ax.axvline(alpha_star, ls=style, color="gray", lw=0.8)
    ax.set(
      xlabel="α (learning rate, units of Adam's update)", ylabel="loss", title=title
    )
    ax.set_ylim(value.min() - 0.1 * np.ptp(value), value.max())
    ax.legend(fontsize=8)
  fig.tight_layout()
  path = args.out / "loss_landscape.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  for name, alpha in minimisers.items():
    print(f"α* {name:32s} {alpha:.4g}")
  print(f"saved {path}")
  return minimisers


if __name__ == "__main__":
  main()
