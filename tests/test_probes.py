"""Forward-only GeN: probe fits against closed forms and the exact modes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_step, quadratic, spd_matrix, tanh_mlp, wide_open
from jax.flatten_util import ravel_pytree

import gen_optax
from gen_optax import Status

PROBE_VARIANTS = [
  dict(mode="probes"),
  dict(mode=gen_optax.Probes(multipliers=(-2.0, -1.0, 0.0, 1.0, 2.0))),
  dict(mode=gen_optax.Probes(multipliers=(0.5, 1.0, 2.0))),
  dict(mode="one-probe", slope_from="value_fn"),
  dict(mode="one-probe", slope_from="gradient"),
]


@pytest.mark.parametrize("variant", PROBE_VARIANTS, ids=str)
def test_every_probe_variant_is_exact_on_a_quadratic(x64, variant):
  a, b = spd_matrix(5, condition=30.0), np.arange(5.0)
  loss = quadratic(a, b)
  # h = α is arbitrary: the profile is exactly quadratic.
  tx = gen_optax.gen(optax.sgd(1.0), init_learning_rate=0.37, **wide_open(**variant))
  step = make_step(tx, loss)
  params, state = jnp.ones(5), tx.init(jnp.ones(5))
  for _ in range(3):
    g = jax.grad(loss)(params)
    params, state, _ = step(params, state)
    np.testing.assert_allclose(state.learning_rate, g @ g / (g @ a @ g), rtol=1e-8)
    np.testing.assert_allclose(state.info.fit_r2, 1.0, rtol=1e-8)


def _errors(estimate, exact, steps):
  return np.array([abs(float(estimate(h)) - exact) for h in steps])


def test_probe_curvature_converges_at_the_expected_order(x64):
  params, loss = tanh_mlp(seed=1)
  flat, unravel = ravel_pytree(params)
  u = unravel(jax.random.normal(jax.random.key(5), flat.shape, flat.dtype))
  exact = gen_optax.measure_line(loss, params, u)
  gradient = jax.grad(loss)(params)
  steps = [0.01, 0.005, 0.0025]

  symmetric = _errors(
    lambda h: (
      gen_optax.measure_line(loss, params, u, mode="probes", step_size=h).curvature
    ),
    float(exact.curvature),
    steps,
  )
  one_probe = _errors(
    lambda h: (
      gen_optax.measure_line(
        loss, params, u, mode="one-probe", step_size=h, gradient=gradient
      ).curvature
    ),
    float(exact.curvature),
    steps,
  )
  symmetric_slope = _errors(
    lambda h: gen_optax.measure_line(loss, params, u, mode="probes", step_size=h).slope,
    float(exact.slope),
    steps,
  )
  # Halving h divides the error by 2^order.
  np.testing.assert_allclose(symmetric[:-1] / symmetric[1:], 4.0, rtol=0.1)
  np.testing.assert_allclose(symmetric_slope[:-1] / symmetric_slope[1:], 4.0, rtol=0.1)
  np.testing.assert_allclose(one_probe[:-1] / one_probe[1:], 2.0, rtol=0.1)


@pytest.mark.parametrize(("mode", "order"), [("probes", 2), ("one-probe", 1)])
def test_probe_learning_rate_converges_to_the_exact_one(x64, mode, order):
  params, loss = tanh_mlp(seed=2)
  grads = jax.grad(loss)(params)

  def first_estimate(**settings):
    # SGD: along Adam's first direction L3 is ~1e-4 L2, hiding the O(h) term.
    tx = gen_optax.gen(optax.sgd(1.0), **wide_open(**settings))
    _, state = tx.update(grads, tx.init(params), params, value_fn=loss)
    assert Status(int(state.info.status)) == Status.ACCEPTED
    return float(state.learning_rate)

  exact = first_estimate()
  errors = [
    abs(first_estimate(mode=mode, init_learning_rate=h) - exact)
    for h in (0.02, 0.01, 0.005)
  ]
  ratios = np.array(errors[:-1]) / np.array(errors[1:])
  np.testing.assert_allclose(ratios, 2.0**order, rtol=0.15)


def test_r2_gate_rejects_a_non_quadratic_profile_and_keeps_alpha():
  # Along u = 1 from θ = −0.2 the profile is (a−0.2)² + 10(a−0.2)⁴: descending,
  # convex, and far from quadratic at a = ±2h = ±1.
  loss = lambda p: jnp.sum(p**2) + 10 * jnp.sum(p**4)  # noqa: E731
  params = jnp.full(3, -0.2)
  grads = -jnp.ones(3)  # SGD direction u = +1
  results = {}
  for points in ((-1.0, 0.0, 1.0), (-2.0, -1.0, 0.0, 1.0, 2.0)):
    tx = gen_optax.gen(
      optax.sgd(1.0),
      mode=gen_optax.Probes(multipliers=points),
      measure_along="current_update",
      init_learning_rate=0.5,
    )
    _, state = tx.update(grads, tx.init(params), params, value_fn=loss)
    results[len(points)] = state
  gated = results[5]
  assert float(gated.info.fit_r2) < 0.99
  assert Status(int(gated.info.status)) == Status.POOR_FIT
  assert float(gated.learning_rate) == 0.5
  # Three points fit exactly (R² = 1): no gate, the estimate is used.
  assert Status(int(results[3].info.status)) == Status.ACCEPTED
  np.testing.assert_allclose(results[3].info.fit_r2, 1.0, rtol=1e-6)


def test_zero_step_size_gives_non_finite_fit_without_raising():
  loss = lambda p: jnp.sum(p**2)  # noqa: E731
  for mode in ("probes", "one-probe"):
    fit = gen_optax.measure_line(
      loss, jnp.ones(2), jnp.ones(2), mode=mode, step_size=0.0
    )
    assert not np.isfinite(float(fit.curvature))


@pytest.mark.parametrize(
  ("measure_along", "expected"),
  [
    # θ ± α·u == θ in float32: every probe equals L(θ), and c = 0/0 or x/0.
    ("current_update", Status.NON_FINITE),
    # The stored step 1e-30·u has a squared norm below float32's range.
    ("previous_step", Status.ZERO_DIRECTION),
  ],
)
@pytest.mark.parametrize("mode", ["probes", "one-probe"])
def test_probe_step_that_underflows_falls_back(mode, measure_along, expected):
  """α = 1e-30: a step too small for float32 is discarded, α kept."""
  loss = lambda p: jnp.sum((p - 3.0) ** 2)  # noqa: E731
  params = jnp.ones(3)
  tx = gen_optax.gen(
    optax.sgd(1.0),
    mode=mode,
    measure_along=measure_along,
    slope_from="gradient",
    init_learning_rate=1e-30,
    min_learning_rate=1e-30,
  )
  grads = jax.grad(loss)(params)
  state = tx.init(params)
  for _ in range(2):  # the second measures along the first step
    updates, state = tx.update(grads, state, params, value_fn=loss)
  assert Status(int(state.info.status)) == expected
  assert float(state.learning_rate) == np.float32(1e-30)
  assert bool(jnp.all(jnp.isfinite(updates)))


@pytest.mark.parametrize("mode", ["probes", "one-probe"])
def test_non_finite_probe_loss_falls_back(mode):
  # A descent direction whose probe at θ + h·u lands where the loss is NaN.
  loss = lambda p: jnp.where(p[0] < 0.5, jnp.nan, jnp.sum(p**2))  # noqa: E731
  params = jnp.array([1.0, 0.0])
  tx = gen_optax.gen(
    optax.sgd(1.0), mode=mode, measure_along="current_update", init_learning_rate=0.9
  )
  grads = jax.grad(loss)(params)  # u = −g = (−2, 0): the probe reaches p₀ = −0.8
  updates, state = tx.update(grads, tx.init(params), params, value_fn=loss)
  assert Status(int(state.info.status)) == Status.NON_FINITE
  assert float(state.learning_rate) == np.float32(0.9)
  np.testing.assert_allclose(updates, -0.9 * grads)


def _count_evaluations(mode, slope_from, fused):
  """Forward passes of the loss in one step beyond the gradient's own."""
  params, loss = tanh_mlp(dtype=jnp.float32)
  calls = []

  def counted(p):
    jax.debug.callback(lambda: calls.append(1))
    return loss(p)

  tx = gen_optax.gen(optax.adam(1.0), mode=mode, slope_from=slope_from)

  def step(state):
    if fused:
      (_, grads), line = gen_optax.value_and_grad(counted, mode=mode)(params, state)
      return tx.update(grads, state, params, line=line)
    grads = jax.grad(counted)(params)
    return tx.update(grads, state, params, value_fn=counted)

  jax.block_until_ready(jax.jit(step)(tx.init(params)))
  jax.effects_barrier()
  return len(calls) - 1


@pytest.mark.parametrize(
  ("mode", "slope_from", "fused", "forward_passes"),
  [
    ("probes", "value_fn", False, 3),  # L(θ), L(θ+hd), L(θ−hd)
    ("probes", "value_fn", True, 2),  # L(θ) from the gradient pass
    ("one-probe", "gradient", False, 2),
    ("one-probe", "gradient", True, 1),  # the paper's one forward pass
  ],
)
def test_the_fused_measurement_saves_a_forward_pass(
  mode, slope_from, fused, forward_passes
):
  assert _count_evaluations(mode, slope_from, fused) == forward_passes


@jax.custom_vjp
def _clipped_relu(x):
  return jnp.clip(x, 0.0, 6.0)


_clipped_relu.defvjp(
  lambda x: (jnp.clip(x, 0.0, 6.0), x),
  lambda x, g: (g * ((x > 0) & (x < 6)),),
)


@pytest.mark.slow  # several seconds: the slow tier (CI runs both)
def test_probe_modes_work_on_a_custom_vjp_model():
  key = jax.random.key(0)
  x = jax.random.normal(key, (32, 4))
  y = jnp.sin(x[:, 0])
  params = {"w": jax.random.normal(key, (4, 8)) / 2, "v": jnp.zeros(8)}
  loss = lambda p: jnp.mean((_clipped_relu(x @ p["w"]) @ p["v"] - y) ** 2)  # noqa: E731
  for settings in (dict(mode="probes"), dict(mode="one-probe", slope_from="gradient")):
    tx = gen_optax.gen(optax.adam(1.0), warmup_growth=None, **settings)
    step = make_step(tx, loss)
    p, state = params, tx.init(params)
    for _ in range(20):
      p, state, _ = step(p, state)
    assert float(loss(p)) < 0.5 * float(loss(params))
    assert int(state.rule.num_accepted) > 10
  # Forward-mode slope fails clearly and says what works instead.
  tx = gen_optax.gen(optax.adam(1.0), mode="one-probe")
  with pytest.raises((TypeError, NotImplementedError), match="slope_from='gradient'"):
    tx.update(jax.grad(loss)(params), tx.init(params), params, value_fn=loss)


def test_one_probe_with_the_gradient_slope_promotes_a_float16_loss():
  """L(θ+hd) − L − h·L' over h² underflows in float16: it must not be float16.

  Before the promotion every refresh of this run was discarded (non-finite).
  """
  params, loss = tanh_mlp(dtype=jnp.float16)  # float16 data: a float16 loss
  # SGD: Adam's eps (1e-8) is 0 in float16, and its first update 0/0 NaN.
  tx = gen_optax.gen(optax.sgd(1.0), mode="one-probe", slope_from="gradient")
  step = make_step(tx, loss)
  p, state, _ = step(params, tx.init(params))
  p, state, _ = step(p, state)
  # Before the promotion: NON_FINITE here, and at every later refresh.
  assert state.info.curvature.dtype == jnp.float32
  assert Status(int(state.info.status)) == Status.ACCEPTED
  assert np.isfinite(float(state.info.curvature))


def test_optax_value_of_another_batch_does_not_enter_the_probe_fit(x64):
  """optax's `value` is the loss on the gradient's batch; value_fn may see
  another.  gen used to take `value` as value_fn(θ): a wrong fit, silently."""
  params, loss_a = tanh_mlp(seed=0)
  _, loss_b = tanh_mlp(seed=1)  # "another batch": other data, same shapes
  tx = gen_optax.gen(optax.adam(1.0), mode="probes", **wide_open())
  state = tx.init(params)
  grads = jax.grad(loss_a)(params)
  _, with_value = tx.update(grads, state, params, value_fn=loss_b, value=loss_a(params))
  _, without = tx.update(grads, state, params, value_fn=loss_b)
  np.testing.assert_allclose(
    with_value.info.curvature, without.info.curvature, rtol=1e-12
  )
  np.testing.assert_allclose(with_value.info.loss, loss_b(params), rtol=1e-12)
