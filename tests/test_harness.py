"""optax's own convergence harness for its contrib optimizers, run on gen.

``optax/contrib/_common_test.py`` (shipped inside optax) trains every
contributed optimizer for 30 000 steps on four targets and asks for the
solution to rtol = atol = 3e-2; ``mechanize`` passes it around sgd, momentum,
adam, adamw and lion.  Here the same targets and tolerance for gen with its
defaults around the same inners, each compiled once as one ``lax.scan``.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import gen_optax


def parabola():
  solution = jnp.array([1.0, -1.0, 1.0])
  return jnp.array([-1.0, 10.0, 1.0]), solution, lambda p: jnp.sum((p - solution) ** 2)


def rosenbrock():
  def loss(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2

  return jnp.zeros(2), jnp.array([1.0, 1.0]), loss


def matrix_parabola():
  solution = jnp.array([[3.0, -2.0], [1.0, 4.0]])
  return jnp.zeros((2, 2)), solution, lambda p: jnp.sum((p - solution) ** 2)


def mixed_tensors():
  solution = (jnp.array([1.0, -1.0, 2.0]), jnp.array([[1.0, 0.0], [-1.0, 1.0]]))

  def loss(p):
    return sum(jnp.sum((a - b) ** 2) for a, b in zip(p, solution, strict=True))

  return (jnp.zeros(3), jnp.zeros((2, 2))), solution, loss


TARGETS = {
  "parabola": parabola,
  "rosenbrock": rosenbrock,
  "matrix-parabola": matrix_parabola,
  "mixed-tensors": mixed_tensors,
}
INNERS = {
  "sgd": lambda: optax.sgd(1.0),
  "sgd-momentum": lambda: optax.sgd(1.0, momentum=0.9),
  "adam": lambda: optax.adam(1.0),
  "adamw": lambda: optax.adamw(1.0),
  "lion-0.9": lambda: optax.lion(1.0, b1=0.9),
  "lion-0.99": lambda: optax.lion(1.0, b1=0.99),
}


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("inner", INNERS)
def test_optax_contrib_harness_targets_converge(inner, target):
  initial, solution, loss = TARGETS[target]()
  tx = gen_optax.gen(INNERS[inner]())

  def step(carry, _):
    params, state = carry
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, value_fn=loss)
    return (optax.apply_updates(params, updates), state), None

  @jax.jit
  def train(params):
    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), length=30_000)
    return params, state

  params, state = train(initial)
  # The harness's own tolerance (test_utils.assert_trees_all_close there).
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(solution), strict=True):
    assert jnp.all(jnp.abs(got - want) <= 3e-2 + 3e-2 * jnp.abs(want)), (got, want)
  assert jnp.isfinite(gen_optax.learning_rate(state))
