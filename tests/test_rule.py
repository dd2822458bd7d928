"""The learning-rate rule from tables of scalars and a NumPy re-implementation."""

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
    smoothing=None,
    relative_error=0.1,
    trust_ratio=2.0,
    warmup_growth=1.2,
    max_growth=None,
  )
  settings.update(overrides)
  return rule_lib.RuleSettings(**settings)


def _state(**fields):
  state = rule_lib.init(1e-3, jnp.float64, warmup=True)
  return state._replace(**{k: jnp.asarray(v) for k, v in fields.items()})


def _measurement(slope, curvature=1.0, disagreement=0.0, length=1.0, discard=0):
  return rule_lib.Measurement(
    *(jnp.asarray(x, jnp.float64) for x in (slope, curvature, disagreement, length)),
    discard=jnp.asarray(discard, jnp.int32),
  )


@pytest.mark.parametrize(
  ("smoothing", "num_measured", "mean_slope", "mean_noise", "weight"),
  [
    # Fixed smoothing: plain averages first, then 1 - γ.
    (0.9, 0, -1.0, 5.0, 1.0),
    (0.9, 4, -1.0, 5.0, 1 / 5),
    (0.9, 50, -1.0, 5.0, 0.1),
    # Noise-following (ε = 0.1): n = 1 + ν / (2ε²σ̄²), at most k + 1 and 100.
    (None, 50, -1.0, 0.0, 1.0),  # no noise: the exact greedy step
    (None, 50, -1.0, 0.2, 1 / 11),  # 1 + 0.2 / 0.02
    (None, 50, -2.0, 0.2, 1 / 3.5),  # a larger signal needs fewer
    (None, 5, -1.0, 0.2, 1 / 6),  # not more than the measurements so far
    (None, 500, -1.0, 1e6, 1 / 100),  # not more than MAX_WINDOW
    (None, 500, 0.0, 1.0, 1 / 100),  # no signal at all
  ],
)
def test_averaging_weight(x64, smoothing, num_measured, mean_slope, mean_noise, weight):
  state = _state(
    num_measured=jnp.int32(num_measured),
    mean_slope=jnp.float64(mean_slope),
    mean_noise=jnp.float64(mean_noise),
  )
  got = rule_lib.averaging_weight(state, _settings(smoothing=smoothing))
  np.testing.assert_allclose(got, weight, rtol=1e-12)


@pytest.mark.parametrize("max_growth", [None, 1.5])
def test_warmup_ends_once_and_never_caps_again(x64, max_growth):
  """Every estimate is 1000·α₀: α climbs the cap α₀·1.2ⁿ, then stays at 1000·α₀.

  Before the warm-up phase was stored, a rule past its warm-up was capped
  again when α fell back onto α₀·gⁿ, and pushed down.
  """
  settings = _settings(smoothing=0.0, max_growth=max_growth)
  state, accepted, alphas = _state(), 0, []
  for _ in range(50):
    state, status, _ = rule_lib.refresh(
      state, jnp.int32(accepted), _measurement(slope=-1.0), settings
    )
    assert Status(int(status)) == Status.ACCEPTED
    accepted += 1
    alphas.append(float(state.learning_rate) / 1e-3)
  n = int(np.ceil(np.log(1000) / np.log(1.2)))  # first cap above 1000
  expected = [1.2**k for k in range(1, n)] + [1000.0] * (50 - n + 1)
  np.testing.assert_allclose(alphas, expected, rtol=1e-12)
  assert not bool(state.warming_up)


def _reference(measurements, settings):
  """A NumPy re-implementation of the documented rule."""
  alpha, s_bar, c_bar, nu_bar = settings.init_learning_rate, 0.0, 0.0, 0.0
  measured = accepted = 0
  warming = settings.warmup_growth is not None
  rho, eps = settings.trust_ratio, settings.relative_error
  out = []
  for slope, curvature, disagreement, length, discard in measurements:
    if discard:
      out.append((alpha, discard))
      continue
    if settings.smoothing is not None:
      w = max(1 - settings.smoothing, 1 / (measured + 1))
    else:
      n = 1 + nu_bar / (2 * eps**2 * s_bar**2) if s_bar != 0 else 100.0
      w = 1 / min(max(n, 1), measured + 1, 100)
    s_bar = (1 - w) * s_bar + w * slope
    c_bar = (1 - w) * c_bar + w * abs(curvature)
    nu_bar = (1 - w) * nu_bar + w * disagreement**2
    measured += 1
    if s_bar >= 0:
      out.append((alpha, Status.NOT_DESCENT))
      continue
    estimate = -s_bar / c_bar / length
    cap = settings.init_learning_rate * settings.warmup_growth ** (accepted + 1)
    if accepted == 0:
      low, high = -np.inf, cap if warming else np.inf
    else:
      growth = settings.max_growth or rho**w
      low, high = alpha / rho, min(alpha * rho, cap if warming else alpha * growth)
    warming = warming and estimate >= cap
    alpha = min(max(estimate, low), high)
    alpha = min(max(alpha, settings.min_learning_rate), settings.max_learning_rate)
    accepted += 1
    out.append((alpha, Status.ACCEPTED))
  return out


@pytest.mark.parametrize("smoothing", [None, 0.9])
def test_rule_matches_an_independent_reimplementation(x64, smoothing):
  rng = np.random.default_rng(0)
  table = []
  for i in range(120):
    slope = -abs(rng.normal()) * (1 + 3 * (i > 60)) + 0.3 * rng.normal()
    if 85 <= i < 110:
      slope = 20.0  # an uphill streak turns the mean slope non-negative
    curvature = rng.lognormal(0, 1) * (-1 if i % 17 == 5 else 1)  # a few concave
    disagreement = rng.normal() * (2.0 if i < 40 else 0.1)  # noise that falls
    length = rng.lognormal(0, 0.5)
    discard = Status.NON_FINITE if i % 23 == 7 else 0
    table.append((slope, curvature, disagreement, length, discard))
  settings = _settings(smoothing=smoothing, max_learning_rate=10.0)
  expected = _reference(table, settings)
  state, accepted = _state(), 0
  statuses = set()
  for row, (alpha, status) in zip(table, expected, strict=True):
    state, got, _ = rule_lib.refresh(
      state, jnp.int32(accepted), _measurement(*row), settings
    )
    assert Status(int(got)) == status
    accepted += int(got) == Status.ACCEPTED
    np.testing.assert_allclose(state.learning_rate, alpha, rtol=1e-10)
    statuses.add(Status(int(got)))
  # The table exercises discards and uphill means as well as accepted estimates.
  assert statuses == {Status.ACCEPTED, Status.NON_FINITE, Status.NOT_DESCENT}
