"""measure_line and the fused value_and_grad against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
  ALL_MODES,
  MODES,
  make_step,
  quadratic,
  spd_matrix,
  tanh_mlp,
)
from jax.flatten_util import ravel_pytree

import gen_optax


@pytest.mark.parametrize("mode", MODES)
def test_curvature_equals_full_hessian_quadratic_form(x64, mode):
  params, loss = tanh_mlp()
  flat, unravel = ravel_pytree(params)
  direction = unravel(jax.random.normal(jax.random.key(1), flat.shape, flat.dtype))

  d = gen_optax.measure_line(loss, params, direction, mode=mode)

  u = ravel_pytree(direction)[0]
  hessian = jax.hessian(lambda v: loss(unravel(v)))(flat)
  np.testing.assert_allclose(d.curvature, u @ hessian @ u, rtol=1e-10)
  np.testing.assert_allclose(d.loss, loss(params), rtol=1e-12)
  assert d.curvature.dtype == jnp.float64


@pytest.mark.parametrize("mode", MODES)
def test_slope_equals_central_finite_difference(x64, mode):
  params, loss = tanh_mlp(seed=3)
  flat, unravel = ravel_pytree(params)
  u = jax.random.normal(jax.random.key(2), flat.shape, flat.dtype)

  d = gen_optax.measure_line(loss, params, unravel(u), mode=mode)

  h = 1e-5
  along = lambda t: loss(unravel(flat + t * u))  # noqa: E731
  np.testing.assert_allclose(d.slope, (along(h) - along(-h)) / (2 * h), rtol=1e-8)
  second = (along(1e-4) - 2 * along(0.0) + along(-1e-4)) / 1e-8
  np.testing.assert_allclose(d.curvature, second, rtol=1e-5)


def test_modes_agree_in_float32():
  params, loss = tanh_mlp(dtype=jnp.float32)
  direction = jax.tree.map(jnp.ones_like, params)
  a, b = (gen_optax.measure_line(loss, params, direction, mode=m) for m in MODES)
  np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5)


def test_bfloat16_params_give_float32_scalars():
  params, loss = tanh_mlp(dtype=jnp.bfloat16)
  direction = jax.tree.map(jnp.ones_like, params)
  d = gen_optax.measure_line(loss, params, direction)
  assert all(x.dtype == jnp.float32 for x in d)
  reference = gen_optax.measure_line(
    loss,
    jax.tree.map(lambda x: x.astype(jnp.float32), params),
    jax.tree.map(lambda x: x.astype(jnp.float32), direction),
  )
  np.testing.assert_allclose(d.curvature, reference.curvature, rtol=5e-2)


@jax.custom_vjp
def _softplus(x):
  return jnp.logaddexp(x, 0.0)


_softplus.defvjp(
  lambda x: (jnp.logaddexp(x, 0.0), x), lambda x, g: (g * jax.nn.sigmoid(x),)
)


def test_custom_vjp_forward_over_reverse_works_and_fwd_fwd_names_alternatives():
  loss = lambda p: jnp.sum(_softplus(p) ** 2)  # noqa: E731
  params = jnp.array([0.3, -1.2])
  direction = jnp.array([1.0, 2.0])
  d = gen_optax.measure_line(loss, params, direction)
  exact = (
    direction
    @ jax.hessian(lambda p: jnp.sum(jnp.logaddexp(p, 0.0) ** 2))(params)
    @ direction
  )
  np.testing.assert_allclose(d.curvature, exact, rtol=1e-5)
  with pytest.raises(NotImplementedError, match=r"forward-over-reverse.*probe"):
    gen_optax.measure_line(loss, params, direction, mode="forward-over-forward")


def test_unknown_mode_is_a_value_error():
  with pytest.raises(ValueError, match="mode='hessian'"):
    gen_optax.measure_line(jnp.sum, jnp.ones(2), jnp.ones(2), mode="hessian")  # type: ignore[arg-type]


# --- the fused path: gradient and measurement in one computation ----------------


def _direction(params, seed=7):
  flat, unravel = ravel_pytree(params)
  return unravel(jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_fused_value_grad_and_line_equal_separate_computations(x64, mode):
  params, loss = tanh_mlp(seed=2)
  direction = _direction(params)
  value, grads, line = gen_optax._src.line.value_grad_and_line(
    loss, params, direction, mode=mode, step_size=0.01
  )
  reference_value, reference_grads = jax.value_and_grad(loss)(params)
  # one-probe's slope is ⟨∇L, d⟩ from the gradient pass: the same number.
  separate = gen_optax.measure_line(
    loss, params, direction, mode=mode, step_size=0.01, gradient=reference_grads
  )
  np.testing.assert_allclose(value, reference_value, rtol=1e-12)
  chex_close = jax.tree.map(
    lambda a, b: np.allclose(a, b, rtol=1e-12), grads, reference_grads
  )
  assert all(jax.tree.leaves(chex_close))
  np.testing.assert_allclose(np.array(line), np.array(separate), rtol=1e-10)


def test_fused_value_and_grad_passes_aux_and_arguments(x64):
  a, b = spd_matrix(3), np.arange(3.0)

  def loss(p, scale, *, shift):
    value = quadratic(scale * a, b)(p) + shift
    return value, {"doubled": 2 * value}

  tx = gen_optax.gen(optax.sgd(1.0))
  params = jnp.ones(3)
  state = tx.init(params)
  state = state._replace(previous_step=jnp.array([1.0, -1.0, 0.5]))
  fn = gen_optax.value_and_grad(loss, has_aux=True)
  ((value, aux), grads), line = fn(params, state, 2.0, shift=1.0)
  d = state.previous_step
  np.testing.assert_allclose(aux["doubled"], 2 * value)
  np.testing.assert_allclose(grads, 2.0 * a @ params - b)
  # Closed forms of a quadratic: L' = ⟨∇L, d⟩, L'' = dᵀ(2A)d.
  np.testing.assert_allclose(line.slope, grads @ d, rtol=1e-12)
  np.testing.assert_allclose(line.curvature, d @ (2.0 * a) @ d, rtol=1e-12)


def _fused_step(tx, loss, mode):
  @jax.jit
  def step(params, state):
    (_, grads), line = gen_optax.value_and_grad(loss, mode=mode)(params, state)
    updates, state = tx.update(grads, state, params, line=line)
    return optax.apply_updates(params, updates), state, updates

  return step


@pytest.mark.parametrize("mode", ALL_MODES)
def test_gen_with_the_fused_line_takes_the_value_fn_steps(x64, mode):
  """Two routes to the same measurement give the same training run."""
  params, loss = tanh_mlp(seed=4)
  tx = gen_optax.gen(optax.adam(1.0), mode=mode, init_learning_rate=0.05)
  runs = []
  for step in (make_step(tx, loss), _fused_step(tx, loss, mode)):
    p, state = params, tx.init(params)
    for _ in range(8):
      p, state, _ = step(p, state)
    runs.append((p, state))
  (p1, s1), (p2, s2) = runs
  assert int(s1.rule.num_accepted) >= 6  # the runs measured, and agreed
  # The probe modes evaluate the same probes; the exact ones the same jvp.
  np.testing.assert_allclose(s1.learning_rate, s2.learning_rate, rtol=1e-9)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_static_refresh_with_the_fused_line_equals_lazy_refresh(x64):
  params, loss = tanh_mlp(seed=5)
  lazy = gen_optax.gen(optax.adam(1.0), refresh_every=3)
  static = gen_optax.gen(optax.adam(1.0))

  @jax.jit(static_argnames="refresh")
  def fused(params, state, refresh):
    fn = gen_optax.value_and_grad(loss, refresh=refresh)
    (_, grads), line = fn(params, state)
    updates, state = static.update(grads, state, params, line=line, refresh=refresh)
    return optax.apply_updates(params, updates), state

  p_lazy, s_lazy = params, lazy.init(params)
  p_static, s_static = params, static.init(params)
  step = make_step(lazy, loss)
  for t in range(9):
    p_lazy, s_lazy, _ = step(p_lazy, s_lazy)
    p_static, s_static = fused(p_static, s_static, refresh=t % 3 == 0)
  assert int(s_static.info.num_refreshes) == 3
  np.testing.assert_allclose(s_lazy.learning_rate, s_static.learning_rate, rtol=1e-10)


def test_fused_line_needs_a_gen_state_that_measures_along_the_previous_step():
  loss = lambda p: jnp.sum(p**2)  # noqa: E731
  params = jnp.ones(2)
  current = gen_optax.gen(optax.sgd(1.0), measure_along="current_update")
  with pytest.raises(ValueError, match="measure_along='previous_step'"):
    gen_optax.value_and_grad(loss)(params, current.init(params))
  with pytest.raises(ValueError, match="exactly one GeNState, found 0"):
    gen_optax.value_and_grad(loss)(params, optax.adam(1.0).init(params))
  two = optax.chain(gen_optax.gen(optax.sgd(1.0)), gen_optax.gen(optax.sgd(1.0)))
  with pytest.raises(ValueError, match="found 2"):
    gen_optax.value_and_grad(loss)(params, two.init(params))
  line = gen_optax.measure_line(loss, params, params)
  with pytest.raises(ValueError, match="measure_along='current_update'"):
    current.update(params, current.init(params), params, line=line)
  tx = gen_optax.gen(optax.sgd(1.0))
  with pytest.raises(TypeError, match=r"line=1\.0"):
    tx.update(params, tx.init(params), params, line=1.0)
  with pytest.raises(TypeError, match="value_fn=None"):
    tx.update(params, tx.init(params), params)


def test_learning_rate_finds_gen_alpha_where_optax_tree_get_is_ambiguous():
  inner = optax.inject_hyperparams(optax.adam)(learning_rate=1.0)
  tx = optax.chain(optax.clip(1.0), gen_optax.gen(inner, init_learning_rate=0.02))
  state = tx.init(jnp.ones(2))
  with pytest.raises(KeyError):  # two fields named learning_rate
    optax.tree.get(state, "learning_rate")
  np.testing.assert_allclose(gen_optax.learning_rate(state), 0.02)
  np.testing.assert_allclose(
    gen_optax.find_state(state).inner_state.hyperparams["learning_rate"], 1.0
  )
