"""gen wraps any optax optimizer: one contract, checked for each of many inners.

In the spirit of optax's own harness for its wrappers
(``optax/contrib/_common_test.py``): every inner optimizer of the table
trains an anisotropic parabola with gen's defaults, compiled once (default
run); the ``slow`` tier (``pytest -m slow``; CI runs both) checks dtypes
(bfloat16, float16, float32, float64) and ``inject_hyperparams`` for every
inner.  Donation and accumulation are tested with Adam in ``test_gen.py``
and ``test_composition.py``.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ALL_MODES
from jax.flatten_util import ravel_pytree

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


def _rosenbrock() -> tuple[Any, Callable, float]:
  """Rosenbrock's valley from its classic start (−1.2, 1); min 0 at (1, 1)."""

  def loss(p):
    x, y = p["w"][0], p["w"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2

  return {"w": jnp.array([-1.2, 1.0])}, loss, 0.0


def _classification_data() -> tuple[jax.Array, jax.Array]:
  """200 points in 5-D whose labels are a noisy linear rule (not separable)."""
  kx, kw, kn = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (200, 5))
  noise = 0.5 * jax.random.normal(kn, (200, 1))
  y = (x @ jax.random.normal(kw, (5, 1)) + noise > 0).astype(x.dtype)
  return x, y


def _logistic_loss(p, x, y):
  """Mean cross-entropy of a logistic regression, plus a small L2 on the weights."""
  z = x @ p["w"] + p["b"]
  return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 5e-3 * jnp.sum(p["w"] ** 2)


@functools.cache
def _logistic_minimum() -> float:
  """min L of the logistic regression by Newton's method in float64 on the
  flattened parameters: an optimum found independently of gen (L is strictly
  convex).  Cached: the tests clear JAX's caches, and this is the same for all."""
  data = _classification_data()  # float32 draws, as the tests see them
  with jax.enable_x64(True):
    x, y = (a.astype(jnp.float64) for a in data)
    params = {"w": jnp.zeros((5, 1), jnp.float64), "b": jnp.zeros((1,), jnp.float64)}
    flat, unravel = ravel_pytree(params)

    def flat_loss(v):
      return _logistic_loss(unravel(v), x, y)

    @jax.jit
    def newton_step(v):
      return v - jnp.linalg.solve(jax.hessian(flat_loss)(v), jax.grad(flat_loss)(v))

    for _ in range(30):
      flat = newton_step(flat)
    return float(flat_loss(flat))


def _logistic() -> tuple[Any, Callable, float]:
  """Logistic regression (a (5, 1) weight matrix and a bias)."""
  x, y = _classification_data()
  params = {"w": jnp.zeros((5, 1)), "b": jnp.zeros((1,))}

  def loss(p):
    return _logistic_loss(p, x.astype(p["w"].dtype), y.astype(p["w"].dtype))

  return params, loss, _logistic_minimum()


CONTRACT_PROBLEMS = {
  "parabola": _parabola,
  "rosenbrock": _rosenbrock,
  "logistic": _logistic,
}
# Steps and the tolerance on L(θ_T) − L*, as a fraction of L(θ_0) − L*, met by
# every inner in every mode with the defaults (measured worst cases in
# brackets, float32):
# - parabola: lamb, the slowest (7e-5);
# - Rosenbrock: lars, whose α sits at max_learning_rate (1.0) all along
#   (1.4e-3 in the exact modes and probes); in one-probe 2.1e-2, as the one
#   loss difference cancels in float32 near the minimum (1.4e-3 in float64);
# - logistic: lars (α at max_learning_rate) and lamb in one-probe level off
#   at 6e-4; the others reach float32's resolution of L* (1e-7).  1000 steps:
#   lars from zero weights makes tiny updates and needs α at its clamp 1, and
#   the warm-up (x1.05 per refresh) takes ln(1000)/ln(1.05) = 142 refreshes to
#   get there from 1e-3 (at x1.2 it took 38; then 500 steps were enough).
BUDGET = {
  "parabola": (500, 1e-3),
  "rosenbrock": (2000, 5e-2),
  "logistic": (1000, 2e-3),
}


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
  params, loss, optimum = CONTRACT_PROBLEMS[problem]()
  steps, tolerance = BUDGET[problem]
  tx = gen_optax.gen(INNERS[inner](), mode=mode)
  final, state, _, step = _train(tx, loss, params, steps)
  gap, initial_gap = float(loss(final)) - optimum, float(loss(params)) - optimum
  assert gap <= tolerance * initial_gap, (inner, problem, mode, gap, initial_gap)
  # What drives the run stays finite; `info` may hold NaN for a measurement
  # that is undefined and was discarded (a zero step once converged).
  assert _finite((final, state.rule, state.previous_step, state.inner_state))
  assert step._cache_size() == 1  # called twice, compiled once


@pytest.mark.parametrize("inner", INNERS)
def test_trains_the_parabola(inner):
  _check_trains(inner, "parabola", "forward-over-reverse")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("problem", CONTRACT_PROBLEMS)
@pytest.mark.parametrize("inner", INNERS)
def test_trains_the_standard_targets(inner, problem, mode):
  _check_trains(inner, problem, mode)


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


@pytest.mark.slow
@pytest.mark.parametrize("inner", INNERS)
def test_donates_its_state(inner):
  """With params and state donated, no buffer of the old state stays alive.

  ``keep_unused=True``: jit otherwise prunes inputs the step never reads
  (adafactor's placeholder factors of an unfactored matrix), and a pruned
  input is not donated.
  """
  params, loss, _ = _parabola()
  tx = gen_optax.gen(INNERS[inner](), refresh_every=2)

  @functools.partial(jax.jit, donate_argnums=(0, 1), keep_unused=True)
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p, value_fn=loss)
    return optax.apply_updates(p, updates), s

  params, state = step(jax.tree.map(jnp.copy, params), tx.init(params))
  old = jax.tree.leaves((params, state))
  params, state = step(params, state)
  assert all(x.is_deleted() for x in old)
  assert _finite((params, state.rule))


@pytest.mark.slow
@pytest.mark.parametrize("inner", INNERS)
def test_multi_steps_equals_the_large_batch(x64, inner):
  """k micro-batches accumulated by ``gen_optax.multi_steps`` = one step on
  their union (equal sizes: the mean of the micro-batch gradients is the
  large-batch gradient).  float64, so that the two summation orders agree to
  1e-9 even through sign-based inners (lion) over 20 updates.
  """
  k = 4
  x, y = _classification_data()
  params = {"w": jnp.zeros((5, 1)), "b": jnp.zeros((1,))}
  # Started near α* (the warm-up from 1e-3 would cap α at 1.2ⁿ·1e-3 for
  # all 20 updates, whatever the measurements).
  make = lambda: gen_optax.gen(INNERS[inner](), init_learning_rate=0.1)  # noqa: E731
  accumulated, direct = gen_optax.multi_steps(make(), k), make()

  def loss_on(x, y):
    return lambda p: _logistic_loss(p, x, y)

  @jax.jit
  def micro_step(p, s, xb, yb):
    grads = jax.grad(_logistic_loss)(p, xb, yb)
    updates, s = accumulated.update(grads, s, p, value_fn=loss_on(x, y))
    return optax.apply_updates(p, updates), s

  @jax.jit
  def large_step(p, s):
    grads = jax.grad(_logistic_loss)(p, x, y)
    updates, s = direct.update(grads, s, p, value_fn=loss_on(x, y))
    return optax.apply_updates(p, updates), s

  p_acc, s_acc = params, accumulated.init(params)
  p_dir, s_dir = params, direct.init(params)
  micro = len(x) // k
  for _ in range(20):
    for i in range(k):
      sl = slice(i * micro, (i + 1) * micro)
      p_acc, s_acc = micro_step(p_acc, s_acc, x[sl], y[sl])
    p_dir, s_dir = large_step(p_dir, s_dir)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), p_acc, p_dir
  )
  # The last measurement too (value_fn's loss, slope, curvature): α alone
  # may sit at a bound that hides them.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
    gen_optax.find_state(s_acc).info,
    gen_optax.find_state(s_dir).info,
  )
  assert micro_step._cache_size() == 1
