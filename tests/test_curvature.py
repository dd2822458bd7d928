"""line_derivatives against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MODES, tanh_mlp
from jax.flatten_util import ravel_pytree

import gen_optax


@pytest.mark.parametrize("mode", MODES)
def test_curvature_equals_full_hessian_quadratic_form(x64, mode):
  params, loss = tanh_mlp()
  flat, unravel = ravel_pytree(params)
  direction = unravel(jax.random.normal(jax.random.key(1), flat.shape, flat.dtype))

  d = gen_optax.line_derivatives(loss, params, direction, mode=mode)

  u = ravel_pytree(direction)[0]
  hessian = jax.hessian(lambda v: loss(unravel(v)))(flat)
  np.testing.assert_allclose(d.curvature, u @ hessian @ u, rtol=1e-10)
  np.testing.assert_allclose(d.value, loss(params), rtol=1e-12)
  assert d.curvature.dtype == jnp.float64


@pytest.mark.parametrize("mode", MODES)
def test_slope_equals_central_finite_difference(x64, mode):
  params, loss = tanh_mlp(seed=3)
  flat, unravel = ravel_pytree(params)
  u = jax.random.normal(jax.random.key(2), flat.shape, flat.dtype)

  d = gen_optax.line_derivatives(loss, params, unravel(u), mode=mode)

  h = 1e-5
  along = lambda t: loss(unravel(flat + t * u))  # noqa: E731
  np.testing.assert_allclose(d.slope, (along(h) - along(-h)) / (2 * h), rtol=1e-8)
  second = (along(1e-4) - 2 * along(0.0) + along(-1e-4)) / 1e-8
  np.testing.assert_allclose(d.curvature, second, rtol=1e-5)


def test_modes_agree_in_float32():
  params, loss = tanh_mlp(dtype=jnp.float32)
  direction = jax.tree.map(jnp.ones_like, params)
  a, b = (gen_optax.line_derivatives(loss, params, direction, mode=m) for m in MODES)
  np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5)


def test_bfloat16_params_give_float32_scalars():
  params, loss = tanh_mlp(dtype=jnp.bfloat16)
  direction = jax.tree.map(jnp.ones_like, params)
  d = gen_optax.line_derivatives(loss, params, direction)
  assert all(x.dtype == jnp.float32 for x in d)
  reference = gen_optax.line_derivatives(
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
  d = gen_optax.line_derivatives(loss, params, direction)
  exact = (
    direction
    @ jax.hessian(lambda p: jnp.sum(jnp.logaddexp(p, 0.0) ** 2))(params)
    @ direction
  )
  np.testing.assert_allclose(d.curvature, exact, rtol=1e-5)
  with pytest.raises(NotImplementedError, match=r"forward-over-reverse.*probe"):
    gen_optax.line_derivatives(loss, params, direction, mode="forward-over-forward")


def test_unknown_mode_is_a_value_error():
  with pytest.raises(ValueError, match="mode='hessian'"):
    gen_optax.line_derivatives(jnp.sum, jnp.ones(2), jnp.ones(2), mode="hessian")  # type: ignore[arg-type]
