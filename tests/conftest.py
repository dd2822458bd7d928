"""Shared problems and helpers for the gen_optax tests."""

import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# tests/multidevice needs 8 host devices: tests/test_multidevice.py runs it in
# a process of its own, started with GEN_OPTAX_MULTIDEVICE=1.
collect_ignore = (
  [] if os.environ.get("GEN_OPTAX_MULTIDEVICE") == "1" else ["multidevice"]
)

MODES = ("forward-over-reverse", "forward-over-forward")  # exact
ALL_MODES = (*MODES, "probes", "one-probe")
MEASURES = ("previous_step", "current_update")


@pytest.fixture
def x64() -> Iterator[None]:
  """Runs a test with float64 enabled (closed forms to 1e-10)."""
  with jax.enable_x64(True):
    yield


def bitwise_equal(a: Any, b: Any) -> bool:
  """Whether two pytrees have the same structure and bit-identical leaves."""
  return jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))


def spd_matrix(n: int, seed: int = 0, condition: float = 10.0) -> np.ndarray:
  """A random symmetric positive-definite matrix with the given condition number."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eigenvalues = np.geomspace(1.0, condition, n)
  return (q * eigenvalues) @ q.T


def quadratic(a: np.ndarray, b: np.ndarray) -> Callable[[jax.Array], jax.Array]:
  """L(θ) = ½ θᵀAθ − bᵀθ."""
  a, b = jnp.asarray(a), jnp.asarray(b)
  return lambda theta: 0.5 * theta @ a @ theta - b @ theta


def wide_open(**overrides: Any) -> dict[str, Any]:
  """gen() settings under which α = α* of the current update exactly.

  No smoothing, bounds or clamp; the measurement along the current update
  (``measure_along="current_update"``), whose closed forms these tests check.
  """
  settings: dict[str, Any] = dict(
    measure_along="current_update",
    smoothing=0.0,
    trust_ratio=None,
    warmup_growth=None,
    max_growth=None,
    min_learning_rate=1e-12,
    max_learning_rate=1e12,
  )
  settings.update(overrides)
  return settings


def make_step(
  tx: optax.GradientTransformationExtraArgs, loss: Callable[[Any], jax.Array]
) -> Callable[[Any, Any], tuple[Any, Any, Any]]:
  """A jitted full-batch training step returning (params, state, updates)."""

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, value_fn=loss)
    return optax.apply_updates(params, updates), state, updates

  return step


def tanh_mlp(seed: int = 0, dtype: Any = jnp.float64) -> tuple[Any, Callable]:
  """A small smooth model on fixed data: (params, loss)."""
  key = jax.random.key(seed)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  params = {
    "hidden": {
      "w": jax.random.normal(k1, (3, 5), dtype) / 2,
      "b": jnp.zeros((5,), dtype),
    },
    "out": [jax.random.normal(k2, (5, 2), dtype) / 2, jnp.zeros((2,), dtype)],
  }
  x = jax.random.normal(k3, (16, 3), dtype)
  y = jax.random.normal(k4, (16, 2), dtype)

  def loss(p):
    h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
    w, b = p["out"]
    return jnp.mean((h @ w + b - y) ** 2)

  return params, loss
