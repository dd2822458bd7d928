"""GeN-SGD and GeN-Adam on classic test functions, with their paths plotted.

* an ill-conditioned quadratic, where GeN-SGD is steepest descent with exact
  line search (each step's gradient is orthogonal to the last: the zig-zag);
* the Rosenbrock function, whose curved valley defeats a constant rate.

Run:  python examples/test_functions.py --steps 200 --out outputs/test_functions
"""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import gen_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FUNCTIONS: dict[str, tuple[Callable[[jax.Array], jax.Array], np.ndarray, Any]] = {
  # name: (function, start, plot window)
  "quadratic": (
    lambda p: 0.5 * (p[0] ** 2 + 20.0 * p[1] ** 2),
    np.array([-4.0, 1.5]),
    ((-5, 5), (-2, 2)),
  ),
  "rosenbrock": (
    lambda p: (1 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2,
    np.array([-1.5, 2.0]),
    ((-2, 2), (-1, 3)),
  ),
}


def optimizers() -> dict[str, optax.GradientTransformation]:
  # Deterministic functions: no noise to average, no warm-up needed, so GeN-SGD
  # takes α* of the current update itself (exact line search).
  exact = dict(
    measure_along="current_update",
    smoothing=0.0,
    trust_ratio=None,
    warmup_growth=None,
    max_growth=None,
    max_learning_rate=10.0,
  )
  return {
    "GeN-SGD": gen_optax.gen(optax.sgd(1.0), **exact),
    "GeN-Adam": gen_optax.gen(optax.adam(1.0), max_learning_rate=10.0),
    "Adam lr=0.05": optax.adam(0.05),
  }


def run(f, start, tx, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """The path θ₀, θ₁, ... and the loss at each point."""
  uses_gen = isinstance(tx, optax.GradientTransformationExtraArgs)

  @jax.jit
  def step(params, state):
    grads = jax.grad(f)(params)
    extra = {"value_fn": f} if uses_gen else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  params = jnp.asarray(start)
  state = tx.init(params)
  path = [np.asarray(params)]
  for _ in range(steps):
    params, state = step(params, state)
    path.append(np.asarray(params))
  path_array = np.array(path)
  return path_array, np.array([float(f(p)) for p in path_array])


def main(argv: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
  with jax.enable_x64(True):  # exact line search to 1e-16, without global state
    return _main(argv)


def _main(argv: list[str] | None) -> dict[str, dict[str, np.ndarray]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--out", type=Path, default=Path("outputs/test_functions"))
  args = parser.parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  finals: dict[str, dict[str, np.ndarray]] = {}
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for row, (name, (f, start, window)) in enumerate(FUNCTIONS.items()):
    (x0, x1), (y0, y1) = window
    xs, ys = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
    grid = jnp.stack([xs, ys], axis=-1)
    zs = np.asarray(jax.vmap(jax.vmap(f))(grid))
    axes[row, 0].contour(xs, ys, np.log1p(zs), levels=30, cmap="Greys", linewidths=0.6)
    finals[name] = {}
    for label, tx in optimizers().items():
      path, losses = run(f, start, tx, args.steps)
      finals[name][label] = losses
      axes[row, 0].plot(path[:, 0], path[:, 1], ".-", ms=2, lw=0.8, label=label)
      axes[row, 1].semilogy(losses + 1e-16, label=label)
      print(f"{name:10s} {label:14s} loss after {args.steps} steps: {losses[-1]:.3e}")
    axes[row, 0].set(title=f"{name}: paths", xlim=(x0, x1), ylim=(y0, y1))
    axes[row, 0].legend(fontsize=8)
    axes[row, 1].set(title=f"{name}: loss", xlabel="step")
    axes[row, 1].legend(fontsize=8)
  fig.tight_layout()
  path = args.out / "test_functions.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  print(f"saved {path}")
  return finals


if __name__ == "__main__":
  main()
