"""Bad input at the API boundary: each case raises an error naming the argument.

One table for ``gen``'s construction arguments, one for its update call
and the helpers.  Every error is raised at trace time, from static
structure, shape and dtype: nothing raises inside traced code.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gen_optax

PARAMS = {"w": jnp.ones(3)}


def _loss(p):
  return jnp.sum(p["w"] ** 2)


# gen's construction arguments: (arguments, error, what the message names).
GEN_ARGUMENTS = [
  (dict(min_learning_rate=-1e-3), ValueError, "min_learning_rate=-0.001"),
  (dict(min_learning_rate=0.0), ValueError, "min_learning_rate=0.0"),
  (dict(max_learning_rate=-1.0), ValueError, "max_learning_rate=-1.0"),
  (
    dict(min_learning_rate=0.5, max_learning_rate=0.1, init_learning_rate=0.2),
    ValueError,
    "min_learning_rate=0.5",
  ),
  (dict(init_learning_rate=5.0), ValueError, "init_learning_rate=5.0"),
  (dict(smoothing=1.0), ValueError, "smoothing=1.0"),
  (dict(smoothing=-0.1), ValueError, "smoothing=-0.1"),
  (dict(trust_ratio=0.5), ValueError, "trust_ratio=0.5"),
  (dict(warmup_growth=1.0), ValueError, "warmup_growth=1.0"),
  (dict(max_growth=0.9), ValueError, "max_growth=0.9"),
  (dict(mode="newton"), ValueError, "mode='newton'"),
  (dict(slope_from="batch"), ValueError, "slope_from='batch'"),
  (dict(refresh_every=0), ValueError, "refresh_every=0"),
  (dict(refresh_every=2.0), TypeError, "refresh_every=2.0"),
  (dict(max_learning_rate="big"), TypeError, "max_learning_rate='big'"),
  (dict(multiplier=-0.5), ValueError, "multiplier=-0.5"),
  (dict(multiplier="cosine"), TypeError, "multiplier='cosine'"),
  (dict(warmup_growth=2.0, trust_ratio=2.0), ValueError, "warmup_growth=2.0 >="),
  (dict(axis_name=3), TypeError, "axis_name=3"),
  (dict(measure_along="next"), ValueError, "measure_along='next'"),
  (dict(smoothing=None), TypeError, "smoothing=None"),
  (dict(total_steps=0), ValueError, "total_steps=0"),
  (dict(total_steps=2.5), TypeError, "total_steps=2.5"),
  (dict(step_dtype=jnp.int32), TypeError, "step_dtype="),
  (
    dict(mode=gen_optax.Probes(multipliers=(0.0, 1.0))),
    ValueError,
    r"multipliers=\(0.0, 1.0\)",
  ),
  (
    dict(mode=gen_optax.Probes(multipliers=(1.0, 1.0, 0.0))),
    ValueError,
    "at least two distinct",
  ),
  (
    dict(mode=gen_optax.Probes(multipliers=("a", 1.0))),
    TypeError,
    "Probes.multipliers must be a sequence of numbers",
  ),
  (dict(mode=gen_optax.Probes(min_r2=1.5)), ValueError, "min_r2=1.5"),
  (
    dict(mode=("probes",)),
    ValueError,
    r"or a gen_optax.Probes, got mode=\('probes',\)",
  ),
  # The probe settings are one argument now (mode=Probes(...)).
  (dict(probe_multipliers=(-1.0, 1.0)), TypeError, "probe_multipliers"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), GEN_ARGUMENTS)
def test_bad_gen_argument_raises_naming_it(kwargs, error, match):
  with pytest.raises(error, match=match):
    gen_optax.gen(optax.adam(1.0), **kwargs)


def _update(**overrides) -> Callable[[], object]:
  """A call of ``gen(adam).update`` with one argument replaced."""

  def call():
    tx = gen_optax.gen(optax.adam(1.0))
    args = dict(
      updates=jax.grad(_loss)(PARAMS),
      state=tx.init(PARAMS),
      params=PARAMS,
      value_fn=_loss,
    )
    args.update(overrides)
    return tx.update(args.pop("updates"), args.pop("state"), **args)

  return call


CASES = {
  # gen's update call
  "value_fn returns a vector": (
    _update(value_fn=lambda p: p["w"]),
    TypeError,
    r"value_fn must return a real scalar loss, got an array of shape \(3,\)",
  ),
  "value_fn returns an int": (
    _update(value_fn=lambda p: jnp.sum(p["w"]).astype(jnp.int32)),
    TypeError,
    "value_fn must return a real scalar loss.*dtype int32",
  ),
  "value_fn is not callable": (_update(value_fn=3.0), TypeError, "value_fn=3.0"),
  "value_fn is missing": (_update(value_fn=None), TypeError, "value_fn=None"),
  "params are missing": (_update(params=None), ValueError, "current parameters"),
  "grads with another structure": (
    _update(updates={"v": jnp.ones(3)}),
    ValueError,
    "updates \\(the gradient\\) must have the tree structure of params",
  ),
  "grads with another shape": (
    _update(updates={"w": jnp.ones(4)}),
    ValueError,
    r"updates \(the gradient\)\['w'\] has shape \(4,\), "
    r"but params\['w'\] has shape \(3,\)",
  ),
  "a state of another transformation": (
    _update(state=optax.adam(1.0).init(PARAMS)),
    TypeError,
    "state must be the GeNState made by this transformation's init, got state "
    "of type tuple",
  ),
  "line of the wrong type": (_update(line=3.0), TypeError, "line=3.0"),
  "refresh that is not a bool": (_update(refresh="yes"), TypeError, "refresh='yes'"),
  "refresh_next that is not a bool": (
    _update(refresh_next=1),
    TypeError,
    "refresh_next must be a Python bool.*refresh_next=1",
  ),
  "a misspelt extra argument": (_update(refersh=True), TypeError, "refersh"),
  # gen's init
  "integer params": (
    lambda: gen_optax.gen(optax.sgd(1.0)).init({"w": jnp.ones(3, jnp.int32)}),
    TypeError,
    r"params\['w'\] has dtype int32",
  ),
  "inner that is not a transformation": (
    lambda: gen_optax.gen(optax.adam),  # the factory, not adam(1.0)
    TypeError,
    "inner must be an optax.GradientTransformation",
  ),
  # helpers
  "value_and_grad of a non-callable": (
    lambda: gen_optax.value_and_grad(3),
    TypeError,
    "fun must be callable, got fun=3",
  ),
  "value_and_grad of a vector loss": (
    lambda: gen_optax.value_and_grad(lambda p: p["w"])(
      PARAMS, gen_optax.gen(optax.adam(1.0)).init(PARAMS)
    ),
    TypeError,
    "fun must return a real scalar loss",
  ),
  "value_and_grad with has_aux and no pair": (
    lambda: gen_optax.value_and_grad(_loss, has_aux=True)(
      PARAMS, gen_optax.gen(optax.adam(1.0)).init(PARAMS)
    ),
    TypeError,
    r"has_aux=True, so it must return a pair \(loss, aux\)",
  ),
  "value_and_grad with a bad mode": (
    lambda: gen_optax.value_and_grad(_loss, mode="newton"),
    ValueError,
    "mode='newton'",
  ),
  "measure_line along another structure": (
    lambda: gen_optax.measure_line(_loss, PARAMS, {"v": jnp.ones(3)}),
    ValueError,
    "direction must have the tree structure of params",
  ),
  "measure_line of a vector loss": (
    lambda: gen_optax.measure_line(lambda p: p["w"], PARAMS, PARAMS),
    TypeError,
    "value_fn must return a real scalar loss",
  ),
  "multi_steps of a non-transformation": (
    lambda: gen_optax.multi_steps("adam", 2),
    TypeError,
    "tx must be an optax.GradientTransformation.*tx='adam'",
  ),
  "find_state without gen": (
    lambda: gen_optax.find_state(optax.adam(1.0).init(PARAMS)),
    ValueError,
    "exactly one GeNState, found 0",
  ),
  "learning_rate of two gens": (
    lambda: gen_optax.learning_rate(
      optax.chain(gen_optax.gen(optax.sgd(1.0)), gen_optax.gen(optax.sgd(1.0))).init(
        PARAMS
      )
    ),
    ValueError,
    "exactly one GeNState, found 2",
  ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_naming_the_argument(case):
  call, error, match = CASES[case]
  with pytest.raises(error, match=match):
    call()


def test_checks_run_at_trace_time_under_jit():
  """The same errors under jax.jit: raised while tracing, from static facts."""
  tx = gen_optax.gen(optax.adam(1.0))
  state = tx.init(PARAMS)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params)
    return tx.update(grads, state, params, value_fn=lambda p: p["w"])

  with pytest.raises(TypeError, match="value_fn must return a real scalar loss"):
    step(PARAMS, state)


def test_infinite_max_learning_rate_is_supported():
  """Documented as supported: no upper bound on α (the greedy step as is)."""
  a = jnp.diag(jnp.array([1e-4, 2e-4]))  # tiny curvature: α* = 1/λ is large
  loss = lambda p: 0.5 * p @ a @ p  # noqa: E731
  tx = gen_optax.gen(
    optax.sgd(1.0),
    max_learning_rate=float("inf"),
    trust_ratio=None,
    warmup_growth=None,
    max_growth=None,
    smoothing=0.0,
    measure_along="current_update",
  )
  p, state = jnp.array([1.0, 0.0]), tx.init(jnp.zeros(2))
  _, state = tx.update(jax.grad(loss)(p), state, p, value_fn=loss)
  # Along −g = −(1e-4, 0): α* = gᵀg / gᵀAg = 1/1e-4, far above the default 1.0.
  np.testing.assert_allclose(state.learning_rate, 1e4, rtol=1e-4)
