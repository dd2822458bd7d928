"""gen wraps any optax optimizer: one contract, checked for each of many inners.

In the spirit of optax's own harness for its wrappers
(``optax/contrib/_common_test.py``): every inner optimizer of the table
trains an anisotropic parabola with gen's defaults, compiled once (default
run); the ``slow`` tier (``pytest -m slow``; CI runs both) checks dtypes
(bfloat16, float16, float32, float64) and ``inject_hyperparams`` for every
inner.  Donation and accumulation are tested with Adam in ``test_gen.py``
and ``test_composition.py``.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gen_optax


def _inners() -> dict[str, Callable[[], optax.GradientTransformation]]:
  inners: dict[str, Callable[[], optax.GradientTransformation]] = {
    "sgd": lambda: optax.sgd(1.0),
    "sgd-momentum": lambda: optax.sgd(1.0, momentum=0.9),
    "nesterov": lambda: optax.sgd(1.0, momentum=0.9, nesterov=True),
    "adam": lambda: optax.adam(1.0),
    "adamw": lambda: optax.adamw(1.0, weight_decay=1e-4),
    "nadam": lambda: optax.nadam(1.0),
    "adamax": lambda: optax.adamax(1.0),
    "lion": lambda: optax.lion(1.0),
    "rmsprop": lambda: optax.rmsprop(1.0),
    "adafactor": lambda: optax.adafactor(1.0),
    "lamb": lambda: optax.lamb(1.0),
    "lars": lambda: optax.lars(1.0),
    "novograd": lambda: optax.novograd(1.0),
    "clip-then-adam": lambda: optax.chain(
      optax.clip_by_global_norm(1.0), optax.adam(1.0)
    ),
  }
  muon = getattr(getattr(optax, "contrib", None), "muon", None)
  if muon is not None:  # optax >= 0.2.5
    inners["muon"] = lambda: muon(1.0)
  return inners


INNERS = _inners()


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """Hundreds of compiled runs in one process exhaust XLA:CPU's code memory
  (LLVM "Cannot allocate memory"): drop them after each test."""
  yield
  jax.clear_caches()


# --- the standard targets: params, loss, and the optimum found independently ---


def _parabola() -> tuple[Any, Callable, float]:
  """A 2-D parameter (as muon needs) on an anisotropic parabola; min 0."""
  target = jnp.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
  scale = jnp.array([[1.0, 2.0, 3.0], [0.5, 1.5, 4.0]])
  params = {"w": jnp.zeros((2, 3))}
  return params, lambda p: jnp.sum(scale * (p["w"] - target) ** 2), 0.0


PROBLEMS = {"parabola": _parabola}
# Steps and the tolerance on L(θ_T) − L*, as a fraction of L(θ_0) − L*: every
# inner reaches it with the defaults (lamb, the slowest, 7e-5 at 500 steps).
BUDGET = {"parabola": (500, 1e-3)}


def _train(tx, loss, params, steps, dtype=None):
  """A full-batch run as one compiled ``lax.scan``: (params, state, losses, run).

  ``run`` is the jitted function, for its compilation count.
  """
  if dtype is not None:
    params = jax.tree.map(lambda p: p.astype(dtype), params)

  def step(carry, _):
    params, state = carry
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, value_fn=loss)
    return (optax.apply_updates(params, updates), state), value

  @jax.jit
  def run(params, state):
    return jax.lax.scan(step, (params, state), length=steps)

  (params, state), losses = run(params, tx.init(params))
  run(params, state)  # a second call, from a state made by the run itself
  return params, state, np.asarray(losses, np.float64), run


def _finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _check_trains(inner: str, problem: str, mode: str) -> None:
  params, loss, optimum = PROBLEMS[problem]()
  steps, tolerance = BUDGET[problem]
  tx = gen_optax.gen(INNERS[inner](), mode=mode)
  final, state, _, step = _train(tx, loss, params, steps)
  gap, initial_gap = float(loss(final)) - optimum, float(loss(params)) - optimum
  assert gap <= tolerance * initial_gap, (inner, problem, gap, initial_gap)
  # What drives the run stays finite; `info` may hold NaN for a measurement
  # that is undefined and was discarded (a zero step once converged).
  assert _finite((final, state.rule, state.previous_step, state.inner_state))
  assert step._cache_size() == 1  # called twice, compiled once


@pytest.mark.parametrize("inner", INNERS)
def test_trains_the_parabola(inner):
  _check_trains(inner, "parabola", "forward-over-reverse")


def _uses_eps(inner: str) -> bool:
  """Inner optimizers that divide by a second-moment estimate plus eps."""
  return inner in {
    "adam",
    "adamw",
    "nadam",
    "adamax",
    "rmsprop",
    "adafactor",
    "clip-then-adam",
  }


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64])
@pytest.mark.parametrize("inner", INNERS)
def test_preserves_dtypes(inner, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    params, loss, _ = _parabola()
    tx = gen_optax.gen(INNERS[inner]())
    final, state, losses, _ = _train(tx, loss, params, 20, dtype=dtype)
    assert all(x.dtype == dtype for x in jax.tree.leaves(final))
    assert all(x.dtype == dtype for x in jax.tree.leaves(state.previous_step))
    # α and the rule's scalars are at least float32 whatever the params.
    assert state.learning_rate.dtype == jnp.result_type(jnp.float32, dtype)
    if dtype == jnp.float16 and _uses_eps(inner):
      # optax's eps (1e-8 and below) is 0 in float16: a zero gradient
      # coordinate gives 0/0 in the inner update itself, before gen.
      return
    assert _finite((final, state.rule, state.previous_step))
    assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("inner", INNERS)
def test_equals_itself_under_inject_hyperparams(inner):
  params, loss, _ = _parabola()
  plain = gen_optax.gen(INNERS[inner](), max_learning_rate=0.5)
  injected = optax.inject_hyperparams(gen_optax.gen, static_args=("refresh_every",))(
    inner=INNERS[inner](), max_learning_rate=0.5
  )
  a, state_a, _, _ = _train(plain, loss, params, 10)
  b, state_b, _, step = _train(injected, loss, params, 10)
  np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
    gen_optax.learning_rate(state_a), gen_optax.learning_rate(state_b), rtol=1e-6
  )
  assert step._cache_size() == 1
