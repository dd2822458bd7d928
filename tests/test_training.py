"""GeN trains a real model: an MLP on scikit-learn's bundled digits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import gen_optax


def _digits():
  x, y = load_digits(return_X_y=True)
  return jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)


def _mlp_init(key):
  k1, k2 = jax.random.split(key)
  return {
    "w1": jax.random.normal(k1, (64, 64)) * (1 / 8),
    "b1": jnp.zeros(64),
    "w2": jax.random.normal(k2, (64, 10)) * (1 / 8),
    "b2": jnp.zeros(10),
  }


def _loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("batch_size", [None, 64], ids=["full_batch", "batch64"])
def test_gen_adam_trains_digits_mlp(batch_size):
  x, y = _digits()
  params = _mlp_init(jax.random.key(0))
  tx = gen_optax.gen(optax.adam(1.0))
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch, fresh):
    grads = jax.grad(_loss)(params, *batch)
    # value_fn sees an independent batch: unbiased slope (see gen's docstring).
    updates, state = tx.update(
      grads, state, params, value_fn=lambda p: _loss(p, *fresh)
    )
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(0)
  initial = float(_loss(params, x, y))
  learning_rates = []
  for _ in range(150):
    if batch_size is None:
      batch = fresh = (x, y)
    else:
      i, j = (rng.choice(len(x), batch_size, replace=False) for _ in range(2))
      batch, fresh = (x[i], y[i]), (x[j], y[j])
    params, state = step(params, state, batch, fresh)
    learning_rates.append(float(state.learning_rate))

  final = float(_loss(params, x, y))
  assert int(state.rule.num_accepted) > 100
  if batch_size is None:
    # Full batch: the quadratic model is exact up to O(α³); the MLP interpolates.
    assert final < 1e-3 * initial, (initial, final)
  else:
    assert final < 0.1 * initial, (initial, final)
    # Adam's update is O(1) per coordinate: a sane α is a usual Adam rate.
    settled = np.array(learning_rates[-50:])
    assert np.all((settled > 1e-4) & (settled < 0.1)), settled
