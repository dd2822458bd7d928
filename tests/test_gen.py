"""gen(): closed forms, invariants, safeguards and plumbing."""

import functools
import itertools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
  ALL_MODES,
  MEASURES,
  MODES,
  bitwise_equal,
  make_step,
  quadratic,
  spd_matrix,
  tanh_mlp,
  wide_open,
)
from jax.flatten_util import ravel_pytree

import gen_optax
from gen_optax import Status
from gen_optax._src import rule as rule_lib
from gen_optax._src.measurement import to_measurement

SLOPES = ("value_fn", "gradient")


def newton_direction(a: np.ndarray) -> optax.GradientTransformation:
  """An inner optimizer whose update is the Newton step −A⁻¹g."""
  inverse = jnp.asarray(np.linalg.inv(a))
  return optax.stateless(lambda g, params: -inverse @ g)


# --- closed forms -------------------------------------------------------------


@pytest.mark.parametrize("slope_from", SLOPES)
@pytest.mark.parametrize("mode", MODES)
def test_sgd_on_quadratic_takes_the_cauchy_step(x64, mode, slope_from):
  a, b = spd_matrix(6, condition=50.0), np.arange(6.0)
  loss = quadratic(a, b)
  tx = gen_optax.gen(optax.sgd(1.0), mode=mode, slope_from=slope_from, **wide_open())
  step = make_step(tx, loss)
  params, state = jnp.zeros(6), tx.init(jnp.zeros(6))
  for _ in range(4):
    g = jax.grad(loss)(params)
    params, state, _ = step(params, state)
    np.testing.assert_allclose(state.learning_rate, g @ g / (g @ a @ g), rtol=1e-10)
    # Exact line search: the new gradient is orthogonal to the old one.
    g_next = jax.grad(loss)(params)
    assert abs(g_next @ g) <= 1e-10 * np.linalg.norm(g_next) * np.linalg.norm(g)


@pytest.mark.parametrize("mode", MODES)
def test_newton_direction_gets_learning_rate_one(x64, mode):
  a, b = spd_matrix(5, seed=1, condition=1e3), np.ones(5)
  loss = quadratic(a, b)
  tx = gen_optax.gen(newton_direction(a), mode=mode, **wide_open())
  params, state, _ = make_step(tx, loss)(jnp.full(5, 3.0), tx.init(jnp.zeros(5)))
  np.testing.assert_allclose(state.learning_rate, 1.0, rtol=1e-10)
  np.testing.assert_allclose(params, np.linalg.solve(a, b), rtol=1e-8)


# Exact modes agree to rounding.  Probe modes difference losses over one whole
# step (α ≈ 0.19 here), so the model's third-order terms move α by a few
# percent (measured 2.8% and 0.9%); test_probes checks their O(h²) convergence.
@pytest.mark.parametrize(
  ("mode", "rtol"),
  [("forward-over-forward", 1e-10), ("probes", 5e-2), ("one-probe", 5e-2)],
)
def test_modes_choose_the_same_learning_rate(x64, mode, rtol):
  params, loss = tanh_mlp()
  lrs = []
  for m in ("forward-over-reverse", mode):
    tx = gen_optax.gen(optax.adam(1.0), mode=m, warmup_growth=None)
    step = make_step(tx, loss)
    p, state = params, tx.init(params)
    for _ in range(5):
      p, state, _ = step(p, state)
    assert int(state.rule.num_accepted) == 4  # the first step has no previous one
    lrs.append(state.learning_rate)
  np.testing.assert_allclose(lrs[1], lrs[0], rtol=rtol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
  "make_inner",
  [optax.adam, optax.sgd, lambda lr: optax.adamw(lr, weight_decay=0.1)],
  ids=["adam", "sgd", "adamw"],
)
def test_step_is_invariant_to_the_inner_learning_rate(x64, mode, make_inner):
  params, loss = tanh_mlp()
  trajectories = []
  for scale in (1.0, 1e-3):
    # α is in units of the inner update: its initial value and bounds scale too.
    tx = gen_optax.gen(
      make_inner(scale),
      mode=mode,
      init_learning_rate=1e-3 / scale,
      min_learning_rate=1e-6 / scale,
      max_learning_rate=10.0 / scale,
    )
    step = make_step(tx, loss)
    p, state = params, tx.init(params)
    for _ in range(6):
      p, state, updates = step(p, state)
    trajectories.append((p, updates))
  chex.assert_trees_all_close(trajectories[0], trajectories[1], rtol=1e-9)


# --- the learning-rate rule ---------------------------------------------------


def test_gen_feeds_the_rule_the_measurement_per_unit_length(x64):
  """gen against the rule called by hand on numbers computed independently.

  The curvature scale and the norm of u change at every step and one line is
  concave; the measurement is (slope/‖u‖, c/‖u‖², loss, ‖u‖).  The rule itself
  is checked against a NumPy re-implementation in test_rule.py.  The loss
  value is held at 0 (its derivatives kept), so that no step is a spike and
  the inner schedule advances once per update.
  """
  a, b = spd_matrix(4, condition=20.0), np.arange(1.0, 5.0)
  norms = [1.0, 3.0, 0.5, 2.0, 1.0, 10.0, 1.0, 1.0]
  scales = [1.0, 1.0, 30.0, -1.0, 1.0 / 30, 1.0, 0.1, 0.1]
  inner = optax.chain(
    optax.sgd(1.0), optax.scale_by_schedule(lambda t: jnp.asarray(norms)[t])
  )
  settings = dict(
    smoothing=0.7,
    trust_ratio=1.5,
    warmup_growth=1.4,
    max_growth=1.1,
    init_learning_rate=0.01,
    min_learning_rate=1e-6,
    max_learning_rate=1e3,
  )
  tx = gen_optax.gen(inner, measure_along="current_update", **settings)
  theta = jnp.arange(4.0)
  with pytest.warns(UserWarning, match="schedule is cancelled"):  # on purpose here
    state = tx.init(theta)
  rule = rule_lib.init(0.01, jnp.float64, warmup=True)
  for norm, scale in zip(norms, scales, strict=True):
    quadratic_loss = quadratic(scale * a, b)
    loss = lambda p, f=quadratic_loss: f(p) - jax.lax.stop_gradient(f(p))  # noqa: E731
    g = np.asarray(jax.grad(loss)(theta))
    u = -norm * g
    s, c, length = g @ u, u @ (scale * a) @ u, np.linalg.norm(u)
    _, state = tx.update(jnp.asarray(g), state, theta, value_fn=loss)
    # The measurement's own estimate, saddle-free like the rule: -s/|c|.
    np.testing.assert_allclose(state.info.raw_learning_rate, -s / abs(c), rtol=1e-10)
    measured = rule_lib.Measurement(
      *(jnp.float64(x) for x in (s / length, c / length**2, 0.0, length)),
      discard=jnp.int32(0),
    )
    rule, status, weight = rule_lib.refresh(
      rule, measured, rule_lib.RuleSettings(**settings)
    )
    chex.assert_trees_all_close(state.rule, rule, rtol=1e-10, atol=1e-12)
    assert int(state.info.status) == int(status)
    np.testing.assert_allclose(state.info.weight, weight, rtol=1e-12)
  assert int(state.rule.num_accepted) == len(norms)


def _line(loss=1.0, slope=-1.0, curvature=2.0, fit_r2=1.0):
  # NumPy scalars: the table is built at import, before x64 is switched on.
  return gen_optax.LineMeasurement(*map(np.float64, (loss, slope, curvature, fit_r2)))


@pytest.mark.parametrize(
  ("lookback", "curvature", "start_slope"),
  [(True, 2.0, -3.0), (True, -2.0, -3.0), (False, 2.0, -1.0), (False, -2.0, -1.0)],
)
def test_to_measurement_is_per_unit_length_from_the_line_start(
  x64, lookback, curvature, start_slope
):
  """Slope s and curvature c along d (‖d‖ = 2, d = 0.5·u): per unit length
  s₀/2 and c/4, u's length 4; measured at the end of the previous step the
  model's start slope is s − |c|, along the current update it is s."""
  measured = to_measurement(
    _line(curvature=curvature),
    jnp.float64(2.0),
    rate=jnp.float64(0.5),
    lookback=lookback,
  )
  assert float(measured.slope) == start_slope / 2
  assert float(measured.curvature) == curvature / 4
  assert float(measured.length) == 4.0
  assert float(measured.loss) == 1.0
  assert Status(int(measured.discard)) == Status.ACCEPTED


@pytest.mark.parametrize(
  ("line", "norm", "options", "status"),
  [
    (_line(), 0.0, dict(stale=True), Status.STALE_STEP),  # before the zero check
    (_line(), 0.0, {}, Status.ZERO_DIRECTION),
    (_line(loss=np.nan), 1.0, {}, Status.NON_FINITE),
    (_line(curvature=np.inf), 1.0, {}, Status.NON_FINITE),
    (_line(fit_r2=0.5), 1.0, dict(min_r2=0.99), Status.POOR_FIT),
    (_line(fit_r2=np.nan), 1.0, dict(min_r2=0.99), Status.POOR_FIT),
    (_line(fit_r2=0.5), 1.0, {}, Status.ACCEPTED),  # no gate
  ],
)
def test_to_measurement_says_why_to_discard(x64, line, norm, options, status):
  measured = to_measurement(
    line, jnp.float64(norm), rate=jnp.float64(1.0), lookback=True, **options
  )
  assert Status(int(measured.discard)) == status
  # A zero direction divides by nothing: the figures stay finite.
  assert bool(jnp.isfinite(measured.length))


def test_step_length_follows_the_norm_of_u_at_once(x64):
  """Same geometry, ‖u‖ growing tenfold per step: α falls tenfold at once.

  This is what keeps heavy-ball momentum, whose buffer grows ~10x in its first
  steps, from diverging: the means are per unit length of u.
  """
  a, b = spd_matrix(3), np.ones(3)
  loss = quadratic(a, b)
  inner = optax.chain(optax.sgd(1.0), optax.scale_by_schedule(lambda t: 10.0**t))
  tx = gen_optax.gen(inner, **wide_open(smoothing=0.9))
  theta = jnp.zeros(3)
  g = jax.grad(loss)(theta)
  with pytest.warns(UserWarning, match="schedule is cancelled"):  # on purpose here
    state = tx.init(theta)
  steps = []
  for _ in range(4):
    updates, state = tx.update(g, state, theta, value_fn=loss)
    steps.append(updates)
  cauchy = float(g @ g / (g @ a @ g))
  for step in steps:
    np.testing.assert_allclose(step, -cauchy * g, rtol=1e-10)
  np.testing.assert_allclose(state.learning_rate, cauchy / 10.0**3, rtol=1e-10)


@pytest.mark.parametrize("growth", [2.0, 1.1])
def test_warmup_caps_alpha_geometrically(x64, growth):
  """Newton's direction has α* = 1: α climbs as init · growthⁿ up to it."""
  a, b = spd_matrix(3, condition=10.0), np.ones(3)
  loss = quadratic(a, b)
  tx = gen_optax.gen(
    newton_direction(a),
    **wide_open(warmup_growth=growth, init_learning_rate=1e-3),
  )
  theta = jnp.full(3, 2.0)
  state = tx.init(theta)
  for n in range(1, 80):
    _, state = tx.update(jax.grad(loss)(theta), state, theta, value_fn=loss)
    np.testing.assert_allclose(
      state.learning_rate, min(1.0, 1e-3 * growth**n), rtol=1e-10
    )


def test_discarded_refresh_does_not_advance_or_end_the_warmup(x64):
  """The cap counts accepted estimates: a NaN batch leaves α on the cap."""
  a, b = spd_matrix(3, condition=10.0), np.ones(3)
  loss = quadratic(a, b)
  tx = gen_optax.gen(
    newton_direction(a), **wide_open(warmup_growth=2.0, max_growth=1.01)
  )
  theta = jnp.full(3, 2.0)
  state, g = tx.init(theta), jax.grad(loss)(theta)
  nan_loss = lambda p: loss(p) + jnp.nan  # noqa: E731
  for value_fn, accepted in [(loss, 1), (nan_loss, 1), (loss, 2), (loss, 3)]:
    _, state = tx.update(g, state, theta, value_fn=value_fn)
    np.testing.assert_allclose(state.learning_rate, 1e-3 * 2.0**accepted)


def test_growth_after_the_first_estimate_is_bounded_by_max_growth(x64):
  """Without a warm-up the first α* is taken as is; then α rises by at most r
  per refresh while α* rises tenfold, and falls at once when α* falls."""
  a, b = spd_matrix(3), np.ones(3)
  theta = jnp.zeros(3)
  tx = gen_optax.gen(optax.sgd(1.0), **wide_open(max_growth=1.5))
  state, alphas = tx.init(theta), []
  for scale in [1.0, 0.1, 0.01, 0.001, 1.0]:
    loss = quadratic(scale * a, b)
    _, state = tx.update(jax.grad(loss)(theta), state, theta, value_fn=loss)
    alphas.append(float(state.learning_rate))
  g = np.ones(3)  # the gradient at θ = 0 for every scale: −b
  cauchy = float(g @ g / (g @ a @ g))
  np.testing.assert_allclose(alphas, cauchy * np.array([1, 1.5, 2.25, 3.375, 1]))


def test_concave_direction_is_measured_by_its_curvature_magnitude(x64):
  """uᵀHu < 0: the step is -slope/|curvature| (saddle-free), finite."""
  loss = lambda p: -jnp.sum(p**2)  # noqa: E731
  params = jnp.array([1.0, -2.0, 0.5])
  tx = gen_optax.gen(optax.sgd(1.0), **wide_open())
  g = jax.grad(loss)(params)
  updates, state = tx.update(g, tx.init(params), params, value_fn=loss)
  assert bool(state.info.accepted)
  assert float(state.info.curvature) < 0
  # slope -|g|², curvature -2|g|²: α = 1/2.
  np.testing.assert_allclose(state.learning_rate, 0.5, rtol=1e-12)
  np.testing.assert_allclose(updates, -0.5 * g, rtol=1e-12)


@pytest.mark.parametrize("bound", ["max_learning_rate", "min_learning_rate"])
def test_learning_rate_is_clamped_to_bounds(x64, bound):
  a, b = spd_matrix(3), np.ones(3)
  loss = quadratic(a, b)
  g = jax.grad(loss)(jnp.zeros(3))
  cauchy = float(g @ g / (g @ a @ g))
  limit = cauchy / 10 if bound == "max_learning_rate" else cauchy * 10
  settings = wide_open(**{bound: limit, "init_learning_rate": limit})
  tx = gen_optax.gen(optax.sgd(1.0), **settings)
  updates, state = tx.update(g, tx.init(jnp.zeros(3)), jnp.zeros(3), value_fn=loss)
  np.testing.assert_allclose(state.info.raw_learning_rate, cauchy, rtol=1e-10)
  np.testing.assert_allclose(state.learning_rate, limit, rtol=1e-12)
  np.testing.assert_allclose(updates, -limit * g, rtol=1e-12)


# --- safeguards -----------------------------------------------------------------


def _first_measurement(loss, inner, params, grads=None, **settings):
  """The update and state after the first refresh that measures something.

  Along the previous step that is the second update (the first has none).
  """
  tx = gen_optax.gen(inner, init_learning_rate=0.25, **settings)
  grads = jax.grad(loss)(params) if grads is None else grads
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=loss))
  updates, state = step(grads, tx.init(params), params)
  if settings["measure_along"] == "previous_step":
    assert Status(int(state.info.status)) == Status.ZERO_DIRECTION
    updates, state = step(grads, state, params)
  return updates, state, grads


@pytest.mark.parametrize("measure_along", MEASURES)
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize(
  ("case", "expected"),
  [
    ("linear", Status.NON_POSITIVE_CURVATURE),
    ("ascent", Status.NOT_DESCENT),
    ("zero_direction", Status.ZERO_DIRECTION),
    ("nan_loss", Status.NON_FINITE),
    ("overflow", Status.NON_FINITE),
  ],
)
def test_fallbacks_keep_the_learning_rate_and_stay_finite(
  mode, case, expected, measure_along
):
  params = jnp.array([1.0, -2.0, 0.5])
  inner = optax.sgd(1.0)
  grads = None
  if case == "linear":  # no curvature (exactly, even by finite differences at h = 1/4)
    loss = lambda p: jnp.sum(p)  # noqa: E731
  elif case == "ascent":
    loss = lambda p: jnp.sum(p**2)  # noqa: E731
    inner = optax.scale(1.0)  # u = +g goes uphill
  elif case == "zero_direction":
    loss = lambda p: jnp.sum(p**2)  # noqa: E731
    grads = jnp.zeros(3)
  elif case == "nan_loss":
    loss = lambda p: jnp.sum(p**2) + jnp.log(-1.0)  # noqa: E731
    grads = 2 * params
  else:  # slope and curvature overflow float32
    loss = lambda p: 1e37 * jnp.sum(p**4)  # noqa: E731
    grads = 2 * params
  updates, state, grads = _first_measurement(
    loss, inner, params, grads, mode=mode, measure_along=measure_along
  )
  assert Status(int(state.info.status)) == expected
  assert not state.info.accepted
  assert float(state.learning_rate) == 0.25
  direction = grads if case == "ascent" else -grads
  np.testing.assert_allclose(updates, 0.25 * direction, rtol=1e-6)
  assert bool(jnp.all(jnp.isfinite(updates)))


def test_rejected_estimate_keeps_previous_learned_rate(x64):
  """After an accepted α, a bad refresh leaves exactly that α in place."""
  a, b = spd_matrix(3), np.ones(3)
  good = quadratic(a, b)
  tx = gen_optax.gen(optax.sgd(1.0), **wide_open())
  theta = jnp.zeros(3)
  _, state = tx.update(jax.grad(good)(theta), tx.init(theta), theta, value_fn=good)
  learned = float(state.learning_rate)
  _, state = tx.update(jax.grad(good)(theta), state, theta, value_fn=lambda p: -good(p))
  assert float(state.learning_rate) == learned
  assert int(state.info.num_refreshes) == 2 and int(state.rule.num_accepted) == 1


def test_uphill_measurement_enters_the_running_means(x64):
  """A fresh batch that says "uphill" lowers the mean slope; α is kept once
  the mean slope is no longer negative."""
  a, b = spd_matrix(3), np.ones(3)
  loss = quadratic(a, b)
  uphill = lambda p: loss(-p)  # noqa: E731  same curvature, slope of opposite sign
  gamma = 0.8
  tx = gen_optax.gen(optax.sgd(1.0), **wide_open(smoothing=gamma))
  theta = jnp.zeros(3)
  g = jax.grad(loss)(theta)
  cauchy = float(g @ g / (g @ a @ g))  # α* of every downhill measurement
  state = tx.init(theta)
  for _ in range(3):
    _, state = tx.update(g, state, theta, value_fn=loss)
  np.testing.assert_allclose(state.learning_rate, cauchy, rtol=1e-12)
  # Slope mean in units of the downhill slope, after 3 downhill measurements
  # (weights 1, 1/2, 1/3: exactly 1), then uphill ones with weight
  # max(1 - γ, 1/(n + 1)); the curvature mean stays 1 (same curvature).
  mean, n = 1.0, 3
  for uphill_batches in (1, 2, 3):
    weight = max(1 - gamma, 1 / (n + 1))
    mean, n = (1 - weight) * mean - weight, n + 1
    updates, state = tx.update(g, state, theta, value_fn=uphill)
    if mean > 0:
      assert bool(state.info.accepted)
      expected = cauchy * mean
      np.testing.assert_allclose(state.learning_rate, expected, rtol=1e-12)
      np.testing.assert_allclose(updates, -expected * g, rtol=1e-12)
    else:  # the mean slope turned non-negative: α stays
      assert uphill_batches == 3
      assert Status(int(state.info.status)) == Status.NOT_DESCENT
      np.testing.assert_allclose(state.learning_rate, expected, rtol=1e-12)


# --- lazy refresh ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_lazy_refresh_does_no_curvature_work_between_refreshes(mode):
  params, loss = tanh_mlp(dtype=jnp.float32)
  evaluations = []

  def counted_loss(p):
    jax.debug.callback(lambda: evaluations.append(1))
    return loss(p)

  tx = gen_optax.gen(optax.adam(1.0), mode=mode, refresh_every=4)
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p, value_fn=counted_loss)
    return optax.apply_updates(p, updates), s

  learning_rates, evaluations_per_step = [], []
  for _ in range(12):
    before = len(evaluations)
    params, state = step(params, state)
    jax.block_until_ready(state)
    jax.effects_barrier()
    evaluations_per_step.append(len(evaluations) - before)
    learning_rates.append(float(state.learning_rate))
  # value_fn runs on steps 0, 4 and 8 only, equally often each time.
  refreshes = evaluations_per_step[0]
  assert refreshes >= 1
  assert evaluations_per_step == [refreshes, 0, 0, 0] * 3
  assert int(state.info.num_refreshes) == 3
  for start in (0, 4, 8):  # α is constant between refreshes
    assert len(set(learning_rates[start : start + 4])) == 1


# --- the inner optimizer ----------------------------------------------------------


def test_inner_state_advances_exactly_once_per_update():
  params, loss = tanh_mlp(dtype=jnp.float32)
  tx = gen_optax.gen(optax.adam(1.0), refresh_every=2)
  step = make_step(tx, loss)
  state = tx.init(params)
  for _ in range(7):
    params, state, _ = step(params, state)
  assert int(optax.tree.get(state.inner_state, "count")) == 7
  assert int(state.count) == 7


def test_extra_args_reach_the_inner_optimizer(x64):
  """An inner that needs value_fn (a line search) receives it."""
  a, b = spd_matrix(3), np.ones(3)
  loss = quadratic(a, b)
  inner = optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(10))
  tx = gen_optax.gen(inner, **wide_open())
  theta = jnp.ones(3)
  value, g = jax.value_and_grad(loss)(theta)
  updates, state = tx.update(
    g, tx.init(theta), theta, value_fn=loss, value=value, grad=g
  )
  # optax's `value` is the loss at θ on the gradient's batch; gen leaves it
  # to the inner optimizer, which found a step with sufficient decrease.
  assert loss(theta + updates) < loss(theta)
  assert bool(state.info.accepted)


# --- jit, dtypes, pytrees -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_jit_compiles_once_and_keeps_dtypes(mode, dtype):
  params, loss = tanh_mlp(dtype=dtype)
  tx = gen_optax.gen(optax.adamw(1.0, weight_decay=1e-2), mode=mode, refresh_every=2)
  traces = []

  @jax.jit
  def step(p, s):
    traces.append(1)
    updates, s = tx.update(jax.grad(loss)(p), s, p, value_fn=loss)
    return optax.apply_updates(p, updates), s, updates

  state = tx.init(params)
  for _ in range(5):
    params, state, updates = step(params, state)
  assert len(traces) == 1
  assert step._cache_size() == 1
  assert state.learning_rate.dtype == jnp.float32
  assert state.count.dtype == jnp.int32
  for leaf in jax.tree.leaves(params) + jax.tree.leaves(updates):
    assert leaf.dtype == dtype
  assert bool(jnp.isfinite(state.learning_rate))


def test_state_can_be_donated():
  """Every state leaf is its own buffer, so donate_argnums works."""
  params, loss = tanh_mlp(dtype=jnp.float32)
  tx = gen_optax.gen(optax.adam(1.0), refresh_every=2)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p, value_fn=loss)
    return optax.apply_updates(p, updates), s

  state = tx.init(params)
  leaves = jax.tree.leaves(state)
  assert len({id(x) for x in leaves}) == len(leaves)
  params, state = step(jax.tree.map(jnp.copy, params), state)
  donated = jax.tree.leaves(state)
  params, state = step(params, state)
  assert int(state.count) == 2
  # The buffers passed in were given to the computation: no copy of the state
  # (the previous step is params-sized) stays alive.
  assert all(x.is_deleted() for x in donated)


@pytest.mark.parametrize("mode", MODES)
def test_nested_pytree_matches_flat_vector(x64, mode):
  params, loss = tanh_mlp()
  flat, unravel = ravel_pytree(params)
  flat_loss = lambda v: loss(unravel(v))  # noqa: E731
  results = []
  for p, f in ((params, loss), (flat, flat_loss)):
    tx = gen_optax.gen(optax.adam(1.0), mode=mode, max_learning_rate=10.0)
    step = make_step(tx, f)
    state = tx.init(p)
    for _ in range(4):
      p, state, _ = step(p, state)
    results.append((ravel_pytree(p)[0], state.learning_rate))
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-10)


def test_learning_rate_is_reachable_with_tree_get_inside_chain():
  params, loss = tanh_mlp(dtype=jnp.float32)
  tx = optax.chain(optax.clip_by_global_norm(1.0), gen_optax.gen(optax.adam(1.0)))
  state = tx.init(params)
  update = jax.jit(lambda g, s: tx.update(g, s, params, value_fn=loss))
  for _ in range(2):  # the second measures along the first step
    _, state = update(jax.grad(loss)(params), state)
  gen_state = state[1]
  assert optax.tree.get(state, "learning_rate") == gen_state.learning_rate
  assert bool(gen_state.info.accepted)


# --- data parallel (axis_name) ------------------------------------------------------


@pytest.mark.slow  # several seconds: the slow tier (CI runs both)
def test_axis_name_makes_replicas_agree():
  """Replicas see different batches: they agree on α only with axis_name."""
  key = jax.random.key(0)
  x = jax.random.normal(key, (4, 8, 3))  # 4 replicas × 8 examples
  y = jnp.sum(x, axis=-1)
  params = jnp.zeros(3)

  def replica_step(axis_name: Any):
    tx = gen_optax.gen(optax.sgd(1.0), axis_name=axis_name, **wide_open())

    def run(xb, yb):
      loss = lambda p: jnp.mean((xb @ p - yb) ** 2)  # noqa: E731
      grads = jax.grad(loss)(params)
      if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
      updates, state = tx.update(grads, tx.init(params), params, value_fn=loss)
      return state.learning_rate, updates

    return jax.vmap(run, axis_name="batch")(x, y)

  lr_synced, updates_synced = replica_step("batch")
  lr_free, _ = replica_step(None)
  assert bool(jnp.all(lr_synced == lr_synced[0]))
  assert bool(jnp.all(updates_synced == updates_synced[0]))
  assert float(jnp.max(lr_free) - jnp.min(lr_free)) > 1e-3 * float(jnp.max(lr_free))
  # The synchronised α is the exact line search on the union of the batches.
  full = lambda p: jnp.mean((x.reshape(-1, 3) @ p - y.reshape(-1)) ** 2)  # noqa: E731
  g = jax.grad(full)(params)
  hg = jax.jvp(jax.grad(full), (params,), (g,))[1]
  np.testing.assert_allclose(lr_synced[0], g @ g / (g @ hg), rtol=1e-5)


# --- validation ---------------------------------------------------------------------


def test_warmup_growth_equal_to_trust_ratio_would_end_the_warm_up_at_once(x64):
  """Why the check exists: with g ≥ ρ the first estimate passes the cap."""
  a, b = spd_matrix(3), 100 * np.ones(3)  # α* ≫ init_learning_rate
  loss = quadratic(a, b)
  settings = dict(smoothing=0.0, max_growth=None, measure_along="current_update")
  tx = gen_optax.gen(optax.sgd(1.0), warmup_growth=1.5, trust_ratio=2.0, **settings)
  _, state, _ = make_step(tx, loss)(jnp.zeros(3), tx.init(jnp.zeros(3)))
  assert bool(state.rule.warming_up)  # capped at α₀·g, the warm-up goes on
  with pytest.raises(ValueError, match=r"warmup_growth=2\.0 >= trust_ratio=2\.0"):
    gen_optax.gen(optax.sgd(1.0), warmup_growth=2.0, trust_ratio=2.0)


def test_multiplier_number_scales_the_step_and_can_be_injected(x64):
  a, b = spd_matrix(3), np.ones(3)
  loss = quadratic(a, b)
  params = jnp.zeros(3)
  grads = jax.grad(loss)(params)
  plain = gen_optax.gen(optax.sgd(1.0), **wide_open())
  half = gen_optax.gen(optax.sgd(1.0), multiplier=0.5, **wide_open())
  injected = optax.inject_hyperparams(gen_optax.gen, static_args=("refresh_every",))(
    inner=optax.sgd(1.0), multiplier=0.5, **wide_open()
  )
  u, _ = plain.update(grads, plain.init(params), params, value_fn=loss)
  for tx in (half, injected):
    v, state = tx.update(grads, tx.init(params), params, value_fn=loss)
    np.testing.assert_allclose(v, 0.5 * u, rtol=1e-12)
    # α is the line's minimiser; the multiplier scales the step only.
    np.testing.assert_allclose(
      gen_optax.learning_rate(state), -(grads @ -grads) / (grads @ a @ grads)
    )


@pytest.mark.parametrize(
  "inner",
  [
    optax.adam(optax.cosine_decay_schedule(1.0, 100)),
    optax.inject_hyperparams(optax.adam)(
      learning_rate=optax.linear_schedule(1.0, 0.1, 100)
    ),
  ],
  ids=["adam(schedule)", "inject_hyperparams(schedule)"],
)
def test_a_schedule_inside_the_inner_optimizer_warns(inner):
  with pytest.warns(UserWarning, match="multiplier=schedule"):
    gen_optax.gen(inner).init(jnp.ones(2))


def test_a_constant_inner_learning_rate_does_not_warn():
  import warnings

  with warnings.catch_warnings():
    warnings.simplefilter("error")
    gen_optax.gen(optax.inject_hyperparams(optax.adam)(learning_rate=1.0)).init(
      jnp.ones(2)
    )


def test_unknown_extra_arguments_raise_instead_of_being_dropped():
  params = jnp.ones(2)
  loss = lambda p: jnp.sum(p**2)  # noqa: E731
  tx = gen_optax.gen(optax.adam(1.0))
  state = tx.init(params)
  with pytest.raises(TypeError, match=r"refersh=\.\.\.; did you mean refresh="):
    tx.update(params, state, params, value_fn=loss, refersh=True)
  with pytest.raises(TypeError, match="did you mean value_fn="):
    tx.update(params, state, params, valuefn=loss, refresh=False)
  plain = optax.GradientTransformation(optax.scale(-1.0).init, optax.scale(-1.0).update)
  tx = gen_optax.gen(plain)
  with pytest.raises(TypeError, match=r"\['batch'\] that neither gen"):
    tx.update(params, tx.init(params), params, value_fn=loss, batch=1)
  # optax's own extra arguments pass to an inner that reads them.
  inner = optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(5))
  tx = gen_optax.gen(inner)
  value, grads = jax.value_and_grad(loss)(params)
  tx.update(grads, tx.init(params), params, value_fn=loss, value=value, grad=grads)


def test_inner_must_be_a_gradient_transformation():
  with pytest.raises(
    TypeError, match=r"inner must be an optax\.GradientTransformation"
  ):
    gen_optax.gen(optax.adam)  # type: ignore[arg-type]


def test_missing_value_fn_or_params_says_what_to_pass():
  params = jnp.ones(2)
  tx = gen_optax.gen(optax.adam(1.0))
  state = tx.init(params)
  with pytest.raises(TypeError, match="value_fn=lambda p: loss"):
    tx.update(params, state, params)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(params, state, value_fn=jnp.sum)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_static_refresh_flag_matches_the_lax_cond_schedule(x64, mode):
  """refresh=True/False at trace time gives the refresh_every trajectory.

  In float64: the two compilations round differently, and the probe modes'
  loss differences lose most digits of float32.
  """
  params, loss = tanh_mlp(dtype=jnp.float64)
  tx = gen_optax.gen(optax.adam(1.0), mode=mode, refresh_every=3)
  evaluations = []

  def counted(p):
    jax.debug.callback(lambda: evaluations.append(1))
    return loss(p)

  @functools.partial(jax.jit, static_argnames="refresh")
  def static_step(p, s, refresh):
    updates, s = tx.update(jax.grad(loss)(p), s, p, value_fn=counted, refresh=refresh)
    return optax.apply_updates(p, updates), s

  scheduled = make_step(tx, loss)
  p_static, s_static = params, tx.init(params)
  p_sched, s_sched = params, tx.init(params)
  for t in range(7):
    p_static, s_static = static_step(p_static, s_static, refresh=t % 3 == 0)
    p_sched, s_sched, _ = scheduled(p_sched, s_sched)
  jax.effects_barrier()
  # The step check is made on static refresh steps and, on the schedule,
  # before a refresh: the two states differ there and agree in all else.
  unchecked = lambda s: s._replace(step_check=0.0, step_check_tolerance=0.0)  # noqa: E731
  chex.assert_trees_all_close(
    (p_static, unchecked(s_static)), (p_sched, unchecked(s_sched)), rtol=1e-6
  )
  assert static_step._cache_size() == 2
  per_refresh = len(evaluations) // 3
  assert len(evaluations) == 3 * per_refresh and per_refresh >= 1


STORE_SCHEDULES = {
  # refresh_every=k: how the step before each refresh comes to store itself
  "lax.cond": lambda t, k: {},
  "static flag": lambda t, k: {"refresh": t % k == 0},
  "told refresh_next": lambda t, k: {
    "refresh": t % k == 0,
    "refresh_next": (t + 1) % k == 0,
  },
}


@pytest.mark.parametrize("schedule", STORE_SCHEDULES)
def test_steps_between_refreshes_store_no_step(x64, schedule):
  """With refresh_every=k only the step before a refresh stores itself.

  The stored step is then the step applied just before each refresh (what
  the refresh measures along), and the state's buffer is passed through
  unchanged on the other steps.
  """
  params, loss = tanh_mlp()
  k = 3
  tx = gen_optax.gen(optax.adam(1.0), refresh_every=k)

  @functools.partial(jax.jit, static_argnames=("refresh", "refresh_next"))
  def step(p, s, refresh=None, refresh_next=None):
    updates, s = tx.update(
      jax.grad(loss)(p), s, p, value_fn=loss, refresh=refresh, refresh_next=refresh_next
    )
    return optax.apply_updates(p, updates), s, updates

  state = tx.init(params)
  for t in range(8):
    before = state.previous_step
    params, state, updates = step(params, state, **STORE_SCHEDULES[schedule](t, k))
    if (t + 1) % k == 0:
      assert bitwise_equal(state.previous_step, updates)
      assert bool(jnp.isfinite(state.step_check_tolerance))
      assert int(state.stored_at) == t
    else:
      assert bitwise_equal(state.previous_step, before)
      assert float(state.step_check_tolerance) == np.inf  # nothing to check
    if t % k == 0 and t:
      assert Status(int(state.info.status)) == Status.ACCEPTED


def test_refresh_next_gives_the_scheduled_run_without_a_schedule(x64):
  """A static loop on refresh_every=1 that says refresh_next before each
  refresh measures what refresh_every=k measures under lax.cond."""
  params0, loss = tanh_mlp()
  k = 4

  def run(tx, flags):
    step = jax.jit(
      lambda p, s, **f: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(jax.grad(loss)(p), s, p, value_fn=loss, **f)
      ),
      static_argnames=("refresh", "refresh_next"),
    )
    params, state, infos = params0, tx.init(params0), []
    for t in range(13):
      params, state = step(params, state, **flags(t))
      infos.append((state.learning_rate, state.info, state.stored_at))
    return params, infos

  told_params, told = run(
    gen_optax.gen(optax.adam(1.0)),
    lambda t: {"refresh": t % k == 0, "refresh_next": (t + 1) % k == 0},
  )
  params, scheduled = run(gen_optax.gen(optax.adam(1.0), refresh_every=k), lambda t: {})
  # α, every refresh's measurement and the stores: bit for bit.  The params
  # to the last bits only: the lax.cond changes how XLA fuses the update.
  chex.assert_trees_all_equal(told, scheduled)  # NaN (no estimate yet) equals NaN
  chex.assert_trees_all_close(told_params, params, rtol=1e-13, atol=0)
  assert len({float(rate) for rate, _, _ in scheduled}) > 2  # α moved


@pytest.mark.parametrize(
  "refresh_every, skipped",
  [(4, {"refresh": True}), (1, {"refresh": False, "refresh_next": False})],
  ids=["off the schedule", "after refresh_next=False"],
)
def test_a_refresh_after_a_step_that_stored_nothing_finds_it_stale(
  x64, refresh_every, skipped
):
  """A refresh whose previous step did not store itself measures no stale
  step: the refresh is discarded and α kept."""
  params, loss = tanh_mlp()
  tx = gen_optax.gen(optax.adam(1.0), refresh_every=refresh_every)

  @functools.partial(jax.jit, static_argnames=("refresh", "refresh_next"))
  def step(p, s, refresh, refresh_next=None):
    updates, s = tx.update(
      jax.grad(loss)(p), s, p, value_fn=loss, refresh=refresh, refresh_next=refresh_next
    )
    return optax.apply_updates(p, updates), s

  state = tx.init(params)
  for t in range(5):  # refreshes at 0 and 4, on the schedule
    params, state = step(params, state, refresh=t % 4 == 0)
  if skipped["refresh"] is False:  # count 5 stores nothing, count 6 refreshes
    params, state = step(params, state, **skipped)
    skipped = {"refresh": True}
  alpha = float(state.learning_rate)
  params, state = step(params, state, **skipped)
  assert Status(int(state.info.status)) == Status.STALE_STEP
  assert float(state.learning_rate) == alpha
  assert int(state.info.num_refreshes) == 3


def test_traced_refresh_flag_is_refused():
  params, loss = tanh_mlp(dtype=jnp.float32)
  tx = gen_optax.gen(optax.adam(1.0))
  with pytest.raises(TypeError, match="refresh must be a Python bool"):
    jax.jit(lambda s, r: tx.update(params, s, params, value_fn=loss, refresh=r))(
      tx.init(params), True
    )


# --- measuring along the previous step (the default) --------------------------------


def _trajectory(tx, losses, params):
  """Runs tx with value_fn = losses[t] (one "batch" per step); params, grads, α."""
  state, record = tx.init(params), []
  for loss in losses:
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, value_fn=loss)
    record.append((params, grads, updates, state))
    params = optax.apply_updates(params, updates)
  return record


@pytest.mark.parametrize("mode", ALL_MODES)
def test_previous_step_with_sgd_is_the_barzilai_borwein_step(x64, mode):
  """Without smoothing or bounds, on a quadratic: α_t = ‖Δθ‖² / ⟨Δθ, Δg⟩."""
  a, b = spd_matrix(6, condition=5.0), np.arange(6.0)
  loss = quadratic(a, b)
  settings = wide_open(measure_along="previous_step", init_learning_rate=0.1)
  record = _trajectory(
    gen_optax.gen(optax.sgd(1.0), mode=mode, **settings), [loss] * 8, jnp.zeros(6)
  )
  assert Status(int(record[0][3].info.status)) == Status.ZERO_DIRECTION
  assert float(record[0][3].learning_rate) == 0.1  # nothing to measure yet
  for (p0, g0, _, _), (p1, g1, _, state) in itertools.pairwise(record):
    dp, dg = p1 - p0, g1 - g0
    # Probes fit a quadratic exactly: rounding of differences only.
    np.testing.assert_allclose(state.learning_rate, dp @ dp / (dp @ dg), rtol=1e-7)


def test_previous_step_is_measured_on_the_current_batch_at_its_start(x64):
  """Each step sees another quadratic "batch" L_t = ½θᵀA_tθ − b_tᵀθ; Adam's
  updates u_t are no gradients.  α_t is the greedy rate of the previous update
  for the *current* batch, at the previous point:
  α_t = −∇L_t(θ_{t−1})ᵀu_{t−1} / u_{t−1}ᵀA_t u_{t−1}."""
  rng = np.random.default_rng(3)
  batches = [
    (spd_matrix(4, seed=t, condition=10.0) * (1 + t), rng.normal(size=4))
    for t in range(6)
  ]
  losses = [quadratic(a, b) for a, b in batches]
  tx = gen_optax.gen(optax.adam(1.0), **wide_open(measure_along="previous_step"))
  record = _trajectory(tx, losses, jnp.ones(4))
  for t in range(1, len(batches)):
    previous_params, _, previous_update, previous_state = record[t - 1]
    u = previous_update / previous_state.learning_rate  # the inner update
    a, _ = batches[t]
    slope = jax.grad(losses[t])(previous_params) @ u
    np.testing.assert_allclose(
      record[t][3].learning_rate, -slope / (u @ a @ u), rtol=1e-10
    )


def test_defaults_converge_on_a_noiseless_quadratic(x64):
  """GeN-SGD, κ = 5, deterministic: no stall at the edge of stability.

  Both measurements converge with the defaults (the current-update rule
  stalled at 2.5e-4 after 600 steps before the rule reacted to overshoot,
  design.md §6); the exact settings are the Barzilai–Borwein method.
  """
  a, b = spd_matrix(6, condition=5.0), np.arange(6.0)
  loss = quadratic(a, b)
  solution = np.linalg.solve(a, b)

  def steps_to(tx, tolerance=1e-10, limit=300):
    step, params, state = make_step(tx, loss), jnp.zeros(6), tx.init(jnp.zeros(6))
    for t in range(limit):
      params, state, _ = step(params, state)
      if np.linalg.norm(params - solution) < tolerance * np.linalg.norm(solution):
        return t + 1
    return limit + 1

  gd = steps_to(optax.sgd(2 / (1.0 + 5.0)))
  current = steps_to(gen_optax.gen(optax.sgd(1.0), measure_along="current_update"))
  defaults = steps_to(gen_optax.gen(optax.sgd(1.0)))
  greedy = steps_to(gen_optax.gen(optax.sgd(1.0), smoothing=0.0, warmup_growth=None))
  # The current-update rule stalled at the edge of stability before the rule
  # reacted to its overshoots (2.5e-4 after 600 steps, design.md §6).
  assert current <= 3 * gd  # measured 137
  # Measured 138 against 55: the warm-up climbs a decade per ~47 refreshes
  # from 1e-3, so it reaches the Cauchy rate (~0.3) only after ~120 steps;
  # "as fast as gradient descent" is not met with the defaults (it was 71 with
  # the warm-up ×1.2 of the rule before).
  assert defaults <= 3 * gd
  # No noise, so no averaging, and no warm-up: the Barzilai–Borwein method,
  # as fast as the best constant step (measured 56 against 55).
  assert greedy <= gd + 2


@pytest.mark.slow  # several seconds: the slow tier (CI runs both)
def test_lazy_refresh_measures_the_step_before_the_refresh(x64):
  params, loss = tanh_mlp()
  tx = gen_optax.gen(optax.adam(1.0), refresh_every=3)
  record = _trajectory(tx, [loss] * 7, params)
  for t in (3, 6):
    previous_update = record[t - 1][2]
    current_params = record[t][0]
    flat = lambda tree: ravel_pytree(tree)[0]  # noqa: E731
    slope = flat(jax.grad(loss)(current_params)) @ flat(previous_update)
    np.testing.assert_allclose(record[t][3].info.slope, slope, rtol=1e-10)
    assert int(record[t][3].info.num_refreshes) == t // 3 + 1


def test_previous_step_can_be_stored_in_lower_precision():
  params, loss = tanh_mlp(dtype=jnp.float32)
  results = []
  for step_dtype in (None, jnp.bfloat16):
    tx = gen_optax.gen(optax.adam(1.0), step_dtype=step_dtype)
    state = tx.init(params)
    step = make_step(tx, loss)
    p = params
    for _ in range(10):
      p, state, _ = step(p, state)
    results.append(state)
  full, low = results
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(low.previous_step))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(full.previous_step))
  # bfloat16 keeps ~3 significant digits of the direction: α within 1%.
  np.testing.assert_allclose(low.learning_rate, full.learning_rate, rtol=1e-2)


def test_diagnostics_are_the_state_as_plain_python_values():
  # Through a chain, after a few steps on a quadratic: the same numbers as
  # the state's arrays, the status by name, nothing left as an array.
  target = jnp.array([1.0, -2.0, 0.5])
  loss = lambda p: jnp.sum((p - target) ** 2)  # noqa: E731
  tx = optax.chain(optax.identity(), gen_optax.gen(optax.sgd(1.0)))
  params, state = jnp.zeros(3), None
  state = tx.init(params)
  for _ in range(4):
    updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
    params = optax.apply_updates(params, updates)
  found = gen_optax.find_state(state)
  d = gen_optax.diagnostics(state)
  assert d["status"] == gen_optax.Status(int(found.info.status)).name
  assert d["learning_rate"] == float(gen_optax.learning_rate(state))
  assert (d["loss"], d["slope"], d["curvature"]) == (
    float(found.info.loss),
    float(found.info.slope),
    float(found.info.curvature),
  )
  assert d["count"] == 4 and d["num_refreshes"] == int(found.info.num_refreshes)
  assert d["num_accepted"] == int(found.rule.num_accepted) >= 1
  assert d["num_changed_steps"] == 0  # gen last: no warning either
  assert all(isinstance(v, float | int | str | bool) for v in d.values())
