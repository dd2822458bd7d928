"""The learning-rate rule from tables of scalars and a NumPy re-implementation."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from gen_optax._src import rule as rule_lib
from gen_optax._src.rule import Status


def _settings(**overrides):
  settings = dict(
    init_learning_rate=1e-3,
    min_learning_rate=1e-9,
    max_learning_rate=1e9,
    smoothing=0.9,
    trust_ratio=2.0,
    warmup_growth=1.2,
    max_growth=None,
  )
  settings.update(overrides)
  return rule_lib.RuleSettings(**settings)


def _state(**fields):
  state = rule_lib.init(1e-3, jnp.float64, warmup=True)
  return state._replace(**{k: jnp.asarray(v) for k, v in fields.items()})


def _measurement(slope, curvature=1.0, loss=0.0, length=1.0, discard=0):
  return rule_lib.Measurement(
    *(jnp.asarray(x, jnp.float64) for x in (slope, curvature, loss, length)),
    discard=jnp.asarray(discard, jnp.int32),
  )


def _refresh(state, measured, settings):
  return rule_lib.refresh(state, measured, settings)


@pytest.mark.parametrize("max_growth", [None, 1.5])
def test_warmup_ends_once_and_never_caps_again(x64, max_growth):
  """Every estimate is 1000·α₀: α climbs the cap α₀·1.2ⁿ, then stays at 1000·α₀.

  Before the warm-up phase was stored, a rule past its warm-up was capped
  again when α fell back onto α₀·gⁿ, and pushed down.
  """
  settings = _settings(smoothing=0.0, max_growth=max_growth)
  state, alphas = _state(), []
  for _ in range(50):
    state, status, _ = _refresh(state, _measurement(slope=-1.0), settings)
    assert Status(int(status)) == Status.ACCEPTED
    alphas.append(float(state.learning_rate) / 1e-3)
  n = int(np.ceil(np.log(1000) / np.log(1.2)))  # first cap above 1000
  expected = [1.2**k for k in range(1, n)] + [1000.0] * (50 - n + 1)
  np.testing.assert_allclose(alphas, expected, rtol=1e-12)
  assert not bool(state.warming_up)


@pytest.mark.parametrize(
  ("level", "variance", "count", "loss", "spike"),
  [
    (1.0, 0.01, 10, 1.39, False),  # 3.9 spreads above the level
    (1.0, 0.01, 10, 1.41, True),  # 4.1 spreads (threshold 1 + 0.4 + 0.001)
    (1.0, 0.01, 1, 100.0, False),  # too few losses to judge
    (1.0, 0.0, 10, 1.0009, False),  # constant loss: within 1e-3 of the level
    (1.0, 0.0, 10, 1.0011, True),
    (1.0, 0.01, 10, float("nan"), False),  # NaN is discarded, not a spike
  ],
)
def test_loss_spike_threshold(x64, level, variance, count, loss, spike):
  state = _state(
    loss_level=jnp.float64(level),
    loss_variance=jnp.float64(variance),
    num_losses=jnp.int32(count),
  )
  assert bool(rule_lib.loss_spike(state, jnp.float64(loss))) == spike


def test_upper_confidence_distance_is_the_delta_method(x64):
  # D = -σ/κ = 2; Var ≈ w (Vσ + D² Vκ + 2 D C) / κ² with w = 1/10 (k ≥ 10).
  state = _state(
    fast_slope=jnp.float64(-1.0),
    fast_curvature=jnp.float64(0.5),
    slope_variance=jnp.float64(0.04),
    curvature_variance=jnp.float64(0.01),
    covariance=jnp.float64(-0.005),
    num_measured=jnp.int32(50),
  )
  variance = 0.1 * (0.04 + 4 * 0.01 + 2 * 2 * -0.005) / 0.25
  expected = 2.0 + rule_lib.CONFIDENCE * math.sqrt(variance)
  np.testing.assert_allclose(rule_lib.upper_confidence_distance(state), expected)
  concave = state._replace(fast_curvature=jnp.float64(0.0))
  assert np.isinf(rule_lib.upper_confidence_distance(concave))


def _reference(measurements, settings):
  """A NumPy re-implementation of the documented rule (docs/method.md)."""
  rho, gamma = settings.trust_ratio, settings.smoothing
  alpha = slow_rate = settings.init_learning_rate
  s_bar = c_bar = f_s = f_c = v_s = v_c = cov = 0.0
  level = loss_var = 0.0
  losses = measured = accepted = 0
  warming = True
  out = []
  for slope, curvature, loss, length, discard in measurements:
    # The loss watch: a spike is a loss LOSS_SPIKE spreads above the level.
    spread = math.sqrt(max(loss_var, 0.0))
    threshold = level + rule_lib.LOSS_SPIKE * spread + 1e-3 * abs(level)
    spike = losses >= 2 and np.isfinite(loss) and loss > threshold
    if np.isfinite(loss):
      w = 1 / min(losses + 1, rule_lib.LOSS_WINDOW)
      delta = loss - level
      level += w * delta
      loss_var = (1 - w) * (loss_var + w * delta**2)
      losses += 1
    if spike:
      alpha = max(alpha / rho, settings.min_learning_rate)
      slow_rate = max(min(slow_rate / rho, alpha * rho), settings.min_learning_rate)
      warming = False
      out.append((alpha, Status.LOSS_SPIKE))
      continue
    if discard:
      out.append((alpha, discard))
      continue
    slow = 1 / min(measured + 1, 1 / (1 - gamma))
    fast = max(slow, 1 / min(measured + 1, rule_lib.FAST_WINDOW))
    kappa = abs(curvature)
    d_s, d_c = slope - s_bar, kappa - c_bar
    s_bar += slow * d_s
    c_bar += slow * d_c
    f_s += fast * (slope - f_s)
    f_c += fast * (kappa - f_c)
    v_s = (1 - slow) * (v_s + slow * d_s**2)
    v_c = (1 - slow) * (v_c + slow * d_c**2)
    cov = (1 - slow) * (cov + slow * d_s * d_c)
    measured += 1
    estimated = s_bar < 0 and c_bar > 0
    first = accepted == 0
    if estimated:
      estimate = -s_bar / c_bar / length
      cap = settings.init_learning_rate * settings.warmup_growth ** (accepted + 1)
      if first:
        low, high = -np.inf, cap
      elif warming:
        low, high = slow_rate / rho, min(slow_rate * rho, cap)
      else:
        growth = settings.max_growth or rho
        low, high = slow_rate / rho, min(slow_rate * rho, slow_rate * growth)
      new_slow = min(max(estimate, low), high)
      if estimate < cap or cap >= settings.max_learning_rate:
        warming = False
    else:
      new_slow = slow_rate
    # The fast means' upper confidence bound on the rate.
    distance = -f_s / f_c if f_c > 0 else np.inf
    w_f = 1 / min(measured, rule_lib.FAST_WINDOW)
    variance = w_f * (v_s + distance**2 * v_c + 2 * distance * cov)
    bound = distance + rule_lib.CONFIDENCE * math.sqrt(max(variance, 0)) / f_c
    confident = bound / length if f_c > 0 else np.inf
    overshoot = not first and measured >= rule_lib.MIN_EVIDENCE and confident < new_slow
    if overshoot:
      new_alpha = max(confident, alpha / rho)
      warming = False
    elif estimated:
      new_alpha = new_slow if first else min(max(new_slow, alpha / rho), alpha * rho)
    else:
      new_alpha = alpha
    alpha = min(max(new_alpha, settings.min_learning_rate), settings.max_learning_rate)
    slow_rate = min(new_slow, alpha * rho)
    slow_rate = min(
      max(slow_rate, settings.min_learning_rate), settings.max_learning_rate
    )
    accepted += estimated
    status = (
      Status.OVERSHOOT
      if overshoot
      else Status.ACCEPTED
      if estimated
      else Status.NOT_DESCENT
      if s_bar >= 0
      else Status.NON_POSITIVE_CURVATURE
    )
    out.append((alpha, status))
  return out


def test_rule_matches_an_independent_reimplementation(x64):
  """A table of 160 measurements that reaches every outcome of the rule."""
  rng = np.random.default_rng(0)
  table = []
  for i in range(160):
    slope = -abs(rng.normal()) * (1 + 3 * (i > 60)) + 0.3 * rng.normal()
    if 85 <= i < 105:
      slope = 20.0  # an uphill streak turns the mean slope non-negative
    if 120 <= i < 140:
      slope = -0.01 * abs(rng.normal())  # flat lines: the recent steps overshoot
    curvature = rng.lognormal(0, 0.5) * (-1 if i % 17 == 5 else 1)  # a few concave
    loss = 2.0 + 0.1 * rng.normal() + (30.0 if i in (40, 150) else 0.0)  # spikes
    length = rng.lognormal(0, 0.3)
    discard = Status.NON_FINITE if i % 23 == 7 else 0
    table.append((slope, curvature, loss, length, discard))
  settings = _settings(smoothing=0.9, max_growth=1.1, max_learning_rate=10.0)
  expected = _reference(table, settings)
  state, statuses = _state(), set()
  for row, (alpha, status) in zip(table, expected, strict=True):
    state, got, _ = _refresh(state, _measurement(*row), settings)
    assert Status(int(got)) == status, (row, status)
    np.testing.assert_allclose(state.learning_rate, alpha, rtol=1e-10)
    statuses.add(Status(int(got)))
  # The table exercises every outcome: estimates, discards, uphill means, an
  # overshoot and the loss spikes.
  assert statuses == {
    Status.ACCEPTED,
    Status.NON_FINITE,
    Status.NOT_DESCENT,
    Status.OVERSHOOT,
    Status.LOSS_SPIKE,
  }


def _run(table, settings):
  state, out = _state(), []
  for slope in table:
    state, status, _ = _refresh(state, _measurement(slope=slope), settings)
    out.append(
      (float(state.learning_rate), float(state.slow_rate), Status(int(status)))
    )
  return out


def test_overshoot_cuts_by_at_most_the_trust_ratio_and_recovers_at_once(
  x64, monkeypatch
):
  """Steady lines say α = 1; then 40 lines say 0.01; then steady again.

  Against the same rule without the overshoot test (its evidence threshold
  out of reach): α falls below the slow estimate, by at most ρ per refresh,
  and when the lines return it is back on the slow rate within one refresh.
  """
  settings = _settings(smoothing=0.98, warmup_growth=None, max_growth=1.02)
  table = [-1.0] * 30 + [-0.01] * 40 + [-1.0] * 20
  reacting = _run(table, settings)
  monkeypatch.setattr(rule_lib, "MIN_EVIDENCE", 10**9)
  slow_only = _run(table, settings)
  assert [s for _, _, s in reacting[:30]] == [Status.ACCEPTED] * 30
  np.testing.assert_allclose(reacting[29][0], 1.0, rtol=1e-12)
  assert all(s != Status.OVERSHOOT for _, _, s in slow_only)
  assert Status.OVERSHOOT in {s for _, _, s in reacting[30:70]}
  alphas = [a for a, _, _ in reacting]
  assert all(b >= a / 2 * (1 - 1e-12) for a, b in itertools.pairwise(alphas))
  assert alphas[69] < 0.9 * slow_only[69][0]  # measured 0.33 against 0.41
  # The lines return: α catches up with the slow rate at once.
  back = next(i for i in range(70, 90) if reacting[i][2] == Status.ACCEPTED)
  assert back <= 71
  np.testing.assert_allclose(reacting[back][0], reacting[back][1], rtol=1e-12)


def test_no_trust_ratio_means_no_reactions(x64):
  """trust_ratio=None: the bare greedy step, whatever the losses say."""
  settings = _settings(smoothing=0.0, trust_ratio=None, warmup_growth=None)
  state = _state()
  for loss in (1.0, 1.0, 1.0, 1e6):  # a spike by any measure
    state, status, _ = _refresh(state, _measurement(-1.0, loss=loss), settings)
    assert Status(int(status)) == Status.ACCEPTED
    np.testing.assert_allclose(state.learning_rate, 1.0)
