"""The digits MLP and the training step that the soak and the studies share.

scikit-learn's digits (8x8 images, 1797 of them, bundled: no download) and a
one-hidden-layer MLP in plain JAX, with a step that takes the gradient on
one batch and gives GeN its ``value_fn`` on another (or the same).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits


def load() -> tuple[np.ndarray, np.ndarray]:
  """Inputs scaled to [0, 1] (float32, 64 features) and labels 0-9."""
  x, y = load_digits(return_X_y=True)
  return (x / 16.0).astype(np.float32), y


def init(key: jax.Array, hidden: int, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
  """64-``hidden``-10 weights drawn N(0, 1/fan-in), zero biases, in ``dtype``."""
  k1, k2 = jax.random.split(key)
  params = {
    "w1": jax.random.normal(k1, (64, hidden)) / float(np.sqrt(64)),
    "b1": jnp.zeros(hidden),
    "w2": jax.random.normal(k2, (hidden, 10)) / float(np.sqrt(hidden)),
    "b2": jnp.zeros(10),
  }
  return jax.tree.map(lambda a: a.astype(dtype), params)


def loss(
  params: dict[str, jax.Array], batch: tuple, activation: Callable = jax.nn.relu
) -> jax.Array:
  """Mean cross-entropy of ``batch = (x, y)`` or ``(x, y, mask)``.

  With a mask, the mean over the examples it keeps (0 when it keeps none: an
  all-padding batch).  Computed in the params' dtype, the loss in float32.
  """
  x, y, *mask = batch
  h = activation(x.astype(params["w1"].dtype) @ params["w1"] + params["b1"])
  logits = (h @ params["w2"] + params["b2"]).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  if not mask:
    return losses.mean()
  return jnp.sum(mask[0] * losses) / jnp.maximum(jnp.sum(mask[0]), 1.0)


def train_step(tx: optax.GradientTransformationExtraArgs, loss: Callable) -> Callable:
  """The jitted ``step(params, state, batch, probe=None) -> (params, state, loss)``.

  The gradient and the loss returned are ``batch``'s; GeN's ``value_fn`` is
  ``loss`` on ``probe`` (``batch`` itself if None).
  """

  @jax.jit
  def step(params, state, batch, probe=None):
    value, grads = jax.value_and_grad(loss)(params, batch)
    seen = batch if probe is None else probe
    updates, state = tx.update(grads, state, params, value_fn=lambda p: loss(p, seen))
    return optax.apply_updates(params, updates), state, value

  return step
