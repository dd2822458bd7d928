r"""GeN's learning-rate rule: from measured slopes and curvatures to α.

Pure functions of scalars (no parameters, no ``value_fn``), so that the rule
can be tested from tables of numbers.  :func:`gen` measures, along a line
through parameter space, the loss, the slope at the line's start and the
curvature, each per unit length; this module averages them, turns their
ratio into a best distance along the line, bounds it, and divides it by the
length of the direction per unit rate to give α.  The derivation and the
screens behind each part are in docs/method.md.
"""

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gen_optax._src.checks import as_number, check_range

# Refreshes of recent evidence: the window of the fast means, which decide
# whether the recent steps overshoot (a few refreshes, short against the slow
# means' 1 / (1 - smoothing) = 50).
FAST_WINDOW = 10.0
# One-sided z of the upper confidence bound on the fast estimate: α is cut
# only when the recent steps are longer than their best length with ~98%
# confidence, never on batch noise alone.
CONFIDENCE = 2.0
# Refreshes of the loss level (the memory of a non-monotone line search,
# Grippo et al. 1986, M = 10) and the z above it that makes a loss a spike.
LOSS_WINDOW = 10.0
LOSS_SPIKE = 4.0
# Measurements before the fast estimate's spread is trusted at all.
MIN_EVIDENCE = 4


class Status(enum.IntEnum):
  """Outcome of the last learning-rate refresh, stored in ``GeNInfo.status``.

  ``ACCEPTED`` and ``OVERSHOOT`` set α from the measurements; ``LOSS_SPIKE``
  cuts it; every other outcome keeps it.  The first three, ``POOR_FIT`` and
  ``STALE_STEP`` discard the measurement; ``NOT_DESCENT`` and
  ``NON_POSITIVE_CURVATURE`` describe the running means, which include it.
  """

  ACCEPTED = 0  #: the running means set α.
  INITIAL = 1  #: no refresh has happened yet.
  ZERO_DIRECTION = 2  #: the measured direction is exactly zero (or not yet there).
  NON_FINITE = 3  #: loss, slope or curvature is NaN or infinite.
  NOT_DESCENT = 4  #: mean slope ≥ 0: on average the line does not go downhill.
  NON_POSITIVE_CURVATURE = 5  #: mean curvature is zero: no minimum along the line.
  POOR_FIT = 6  #: probe fit's R² below ``min_r2`` (more than three points).
  #: the recent steps were longer than their best length, beyond the noise:
  #: α was cut to the upper confidence bound of the recent estimate.
  OVERSHOOT = 7
  #: the loss jumped far above its running level: α was cut by the trust
  #: ratio, and the step that led there was taken back.
  LOSS_SPIKE = 8
  #: the stored step is not the last step, which did not store itself: a
  #: refresh off ``refresh_every``'s schedule (a static ``refresh=True``),
  #: or after a step told ``refresh_next=False``.
  STALE_STEP = 9

  def __str__(self) -> str:
    return self.name


class RuleSettings(NamedTuple):
  """The constants of the rule (Python numbers, or tracers under inject_hyperparams)."""

  init_learning_rate: float
  min_learning_rate: float
  max_learning_rate: float
  smoothing: float  # γ, weight of the past in the slow means
  trust_ratio: float | None
  warmup_growth: float | None
  max_growth: float | None  # None: only the trust ratio bounds growth


def check_settings(settings: RuleSettings) -> None:
  """Raises ValueError/TypeError naming the first bad setting of the rule."""
  low, high, init = (
    as_number(name, getattr(settings, name))
    for name in ("min_learning_rate", "max_learning_rate", "init_learning_rate")
  )
  check_range(
    "min_learning_rate", settings.min_learning_rate, lambda x: x > 0, "be > 0"
  )
  check_range(
    "max_learning_rate", settings.max_learning_rate, lambda x: x > 0, "be > 0"
  )
  if low is not None and high is not None and low > high:
    raise ValueError(
      "min_learning_rate must be <= max_learning_rate, got "
      f"min_learning_rate={settings.min_learning_rate!r} > "
      f"max_learning_rate={settings.max_learning_rate!r}."
    )
  if init is not None and not (
    (low is None or init >= low) and (high is None or init <= high)
  ):
    raise ValueError(
      "init_learning_rate must lie in [min_learning_rate, max_learning_rate] = "
      f"[{settings.min_learning_rate!r}, {settings.max_learning_rate!r}], "
      f"got init_learning_rate={settings.init_learning_rate!r}."
    )
  if settings.smoothing is None:
    raise TypeError(
      "smoothing must be a number in [0, 1): smoothing=None (the weight that "
      "followed the noise) was removed, see the CHANGELOG; got smoothing=None."
    )
  check_range("smoothing", settings.smoothing, lambda g: 0 <= g < 1, "lie in [0, 1)")
  rho, growth = settings.trust_ratio, settings.warmup_growth
  check_range("trust_ratio", rho, lambda r: r >= 1, "be >= 1 or None")
  check_range("warmup_growth", growth, lambda g: g > 1, "be > 1 or None")
  rho = None if rho is None else as_number("trust_ratio", rho)
  growth = None if growth is None else as_number("warmup_growth", growth)
  if rho is not None and growth is not None and not growth < rho:
    # The first accepted estimate may exceed the cap α₀gⁿ by at most ρ: with
    # g ≥ ρ the cap never binds, and the warm-up would end at once.
    raise ValueError(
      "warmup_growth must be < trust_ratio (or one of them None), got "
      f"warmup_growth={settings.warmup_growth!r} >= "
      f"trust_ratio={settings.trust_ratio!r}."
    )
  check_range("max_growth", settings.max_growth, lambda r: r >= 1, "be >= 1 or None")


class Measurement(NamedTuple):
  """One measurement of a line, per unit length (scalars of α's dtype)."""

  slope: jax.Array  # L'(start)[d̂], slope at the line's start along the unit direction
  curvature: jax.Array  # L''[d̂, d̂], may be negative
  loss: jax.Array  # L at the point where the line was measured
  length: jax.Array  # ‖direction‖ per unit learning rate: α̂ = distance / length
  discard: jax.Array  # int32 Status: ACCEPTED, or why the measurement is unusable


class RuleState(NamedTuple):
  """What the rule remembers between refreshes."""

  learning_rate: jax.Array  #: scalar float, α
  #: scalar float, the slow means' bounded estimate of α, which α follows
  #: unless the recent steps overshoot
  slow_rate: jax.Array
  #: scalar float, the largest α since the last cut (the peak a horizon decays)
  peak_rate: jax.Array
  mean_slope: jax.Array  #: scalar float, slow running mean of unit slopes
  mean_curvature: jax.Array  #: scalar float, slow running mean of abs(unit curvature)
  fast_slope: jax.Array  #: scalar float, fast running mean of unit slopes
  fast_curvature: jax.Array  #: scalar float, fast running mean of abs(unit curvature)
  slope_variance: jax.Array  #: scalar float, running variance of unit slopes
  curvature_variance: jax.Array  #: scalar float, running variance of abs(curvature)
  covariance: jax.Array  #: scalar float, their running covariance
  loss_level: jax.Array  #: scalar float, running mean of the measured losses
  loss_variance: jax.Array  #: scalar float, running variance of the measured losses
  #: scalar float, length per unit rate of the last measured direction
  last_length: jax.Array
  num_losses: jax.Array  #: scalar int32, losses in the loss level
  num_measured: jax.Array  #: scalar int32, measurements in the means
  num_accepted: jax.Array  #: scalar int32, refreshes that set α from the means
  warming_up: jax.Array  #: scalar bool, whether α still climbs the warm-up cap


def init(init_learning_rate: float, dtype: jnp.dtype, warmup: bool) -> RuleState:
  """The rule before any measurement: α = ``init_learning_rate``."""
  # A fresh buffer per field: a state with shared buffers cannot be donated.
  zero = lambda: jnp.zeros((), dtype)  # noqa: E731
  count = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
  return RuleState(
    learning_rate=jnp.asarray(init_learning_rate, dtype),
    slow_rate=jnp.asarray(init_learning_rate, dtype),
    peak_rate=jnp.asarray(init_learning_rate, dtype),
    mean_slope=zero(),
    mean_curvature=zero(),
    fast_slope=zero(),
    fast_curvature=zero(),
    slope_variance=zero(),
    curvature_variance=zero(),
    covariance=zero(),
    loss_level=zero(),
    loss_variance=zero(),
    last_length=zero(),
    num_losses=count(),
    num_measured=count(),
    num_accepted=count(),
    warming_up=jnp.asarray(warmup),
  )


def _weight(count: jax.Array, window: jax.Array) -> jax.Array:
  """1/(k+1) for the first measurements (plain averages), then 1/window."""
  return 1 / jnp.minimum(count.astype(window.dtype) + 1, window)


def _ema(mean: jax.Array, value: jax.Array, weight: jax.Array, use: jax.Array):
  """The running mean with ``value`` entered at ``weight`` where ``use``."""
  value = jnp.where(use, value, 0)  # a discarded value may be NaN
  return jnp.where(use, mean + weight * (value - mean), mean)


def _moment(moment, deviation_a, deviation_b, weight, use):
  """A running central moment: (1 − w)(m + w δa δb), the EMA of products."""
  product = jnp.where(use, deviation_a * deviation_b, 0)
  return jnp.where(use, (1 - weight) * (moment + weight * product), moment)


def loss_spike(state: RuleState, loss: jax.Array) -> jax.Array:
  """Whether ``loss`` is a spike: above the running level by ``LOSS_SPIKE`` spreads.

  Needs two earlier losses; a spread of exactly zero (a constant loss) still
  lets a loss count as a spike only above the level by 1e-3 of it.
  """
  spread = jnp.sqrt(jnp.maximum(state.loss_variance, 0))
  threshold = state.loss_level + LOSS_SPIKE * spread + 1e-3 * jnp.abs(state.loss_level)
  return (state.num_losses >= 2) & (loss > threshold)


def upper_confidence_distance(state: RuleState) -> jax.Array:
  r"""The fast means' best distance plus ``CONFIDENCE`` standard errors.

  :math:`D_f = -\bar\sigma_f / \bar\kappa_f`; by the delta method its variance
  is :math:`w_f (V_\sigma + D_f^2 V_\kappa + 2 D_f C) / \bar\kappa_f^2`, with
  the running (co)variances of single measurements and :math:`w_f` the fast
  weight (the variance of an exponential mean of weight w is at most w times
  that of one value).  Infinite while the fast curvature is not positive.
  """
  dtype = state.fast_slope.dtype
  curvature = state.fast_curvature
  safe = jnp.where(curvature > 0, curvature, 1)
  distance = -state.fast_slope / safe
  weight = _weight(state.num_measured - 1, jnp.asarray(FAST_WINDOW, dtype))
  variance = weight * (
    state.slope_variance
    + distance**2 * state.curvature_variance
    + 2 * distance * state.covariance
  )
  error = jnp.sqrt(jnp.maximum(variance, 0)) / safe
  bound = distance + jnp.asarray(CONFIDENCE, dtype) * error
  return jnp.where(curvature > 0, bound, jnp.inf)


def refresh(
  state: RuleState, measured: Measurement, settings: RuleSettings
) -> tuple[RuleState, jax.Array, jax.Array]:
  """Enters one measurement; returns (new state, Status, weight used)."""
  dtype = state.learning_rate.dtype
  inf = jnp.asarray(jnp.inf, dtype)
  alpha, length = state.learning_rate, measured.length
  safe_length = jnp.where(length > 0, length, 1)

  # The loss watch sees every finite loss, usable measurement or not.  The
  # reactions (spike, overshoot) move α by the trust ratio: without one, the
  # rule is the bare greedy step.
  reacts = settings.trust_ratio is not None
  rho = jnp.asarray(settings.trust_ratio if reacts else 1.0, dtype)
  spike = loss_spike(state, measured.loss) & reacts
  finite_loss = jnp.isfinite(measured.loss)
  loss_weight = _weight(state.num_losses, jnp.asarray(LOSS_WINDOW, dtype))
  loss_deviation = jnp.where(finite_loss, measured.loss - state.loss_level, 0)
  loss_level = _ema(state.loss_level, measured.loss, loss_weight, finite_loss)
  loss_variance = _moment(
    state.loss_variance, loss_deviation, loss_deviation, loss_weight, finite_loss
  )

  usable = (measured.discard == Status.ACCEPTED) & ~spike
  slow = _weight(state.num_measured, 1 / (1 - jnp.asarray(settings.smoothing, dtype)))
  # Never a longer window than the slow means' (smoothing=0: both the last).
  fast = jnp.maximum(slow, _weight(state.num_measured, jnp.asarray(FAST_WINDOW, dtype)))
  slope = measured.slope
  # |c|: a concave line is measured by its magnitude, as saddle-free Newton does.
  curvature = jnp.abs(measured.curvature)
  slope_deviation = slope - state.mean_slope
  curvature_deviation = curvature - state.mean_curvature
  means = RuleState(
    learning_rate=alpha,
    slow_rate=state.slow_rate,
    peak_rate=state.peak_rate,
    mean_slope=_ema(state.mean_slope, slope, slow, usable),
    mean_curvature=_ema(state.mean_curvature, curvature, slow, usable),
    fast_slope=_ema(state.fast_slope, slope, fast, usable),
    fast_curvature=_ema(state.fast_curvature, curvature, fast, usable),
    slope_variance=_moment(
      state.slope_variance, slope_deviation, slope_deviation, slow, usable
    ),
    curvature_variance=_moment(
      state.curvature_variance, curvature_deviation, curvature_deviation, slow, usable
    ),
    covariance=_moment(
      state.covariance, slope_deviation, curvature_deviation, slow, usable
    ),
    loss_level=loss_level,
    loss_variance=loss_variance,
    last_length=jnp.where(
      measured.discard == Status.ACCEPTED, length, state.last_length
    ),
    num_losses=state.num_losses + finite_loss.astype(jnp.int32),
    num_measured=state.num_measured + usable.astype(jnp.int32),
    num_accepted=state.num_accepted,
    warming_up=state.warming_up,
  )
  descent = means.mean_slope < 0
  positive = means.mean_curvature > 0
  estimated = usable & descent & positive
  distance = -means.mean_slope / jnp.where(estimated, means.mean_curvature, 1)
  estimate = distance / safe_length

  # The slow rate moves by at most ρ per refresh, grows by at most r after
  # the warm-up, and climbs the warm-up cap α₀gⁿ⁺¹ before; the first
  # estimate is bound by the cap alone (α₀ is a guess, not a measurement).
  first = state.num_accepted == 0
  slow_rate = state.slow_rate
  lower, upper = -inf, inf
  if reacts:
    lower, upper = slow_rate / rho, slow_rate * rho
  growth = upper
  if settings.max_growth is not None:
    growth = jnp.minimum(upper, slow_rate * jnp.asarray(settings.max_growth, dtype))
  cap = inf
  if settings.warmup_growth is not None:
    g = jnp.asarray(settings.warmup_growth, dtype)
    cap = settings.init_learning_rate * g ** (state.num_accepted.astype(dtype) + 1)
  upper = jnp.where(state.warming_up, jnp.minimum(upper, cap), growth)
  lower = jnp.where(first, -inf, lower)
  upper = jnp.where(first, cap, upper)
  # The upper bound wins when the two cross (a warm-up cap under α/ρ).
  bounded = jnp.minimum(jnp.maximum(estimate, lower), upper)
  new_slow = jnp.where(estimated, bounded, slow_rate)

  # The recent steps overshoot when the fast estimate's upper confidence
  # bound lies below the slow rate: α is cut to it, by at most ρ per refresh,
  # and recovers towards the slow rate as fast when the evidence turns.
  confident = upper_confidence_distance(means) / safe_length
  enough = means.num_measured >= MIN_EVIDENCE
  overshoot = usable & ~first & enough & (confident < new_slow) & reacts
  follow = jnp.where(estimated, new_slow, alpha)
  if reacts:
    follow = jnp.where(first, follow, jnp.clip(follow, alpha / rho, alpha * rho))
  new_alpha = jnp.where(overshoot, jnp.maximum(confident, alpha / rho), follow)
  # A spike cuts α and the slow rate by ρ: the last step went too far.
  new_alpha = jnp.where(spike, alpha / rho, new_alpha)
  new_slow = jnp.where(spike, slow_rate / rho, new_slow)
  new_alpha = jnp.clip(
    new_alpha, settings.min_learning_rate, settings.max_learning_rate
  )
  # The slow rate stays within ρ of α: its memory of an uncut α is one ratio.
  if reacts:
    new_slow = jnp.minimum(new_slow, new_alpha * rho)
  new_slow = jnp.clip(new_slow, settings.min_learning_rate, settings.max_learning_rate)
  status = jnp.select(
    [
      spike,
      measured.discard != Status.ACCEPTED,
      overshoot,
      ~descent,
      ~positive,
    ],
    [
      Status.LOSS_SPIKE,
      measured.discard,
      Status.OVERSHOOT,
      Status.NOT_DESCENT,
      Status.NON_POSITIVE_CURVATURE,
    ],
    Status.ACCEPTED,
  ).astype(jnp.int32)
  # The warm-up ends, for good, at the first estimate below its cap, the
  # first overshoot or spike, or when the cap passes the largest rate.
  ends_warmup = (
    (estimated & ((estimate < cap) | (cap >= settings.max_learning_rate)))
    | overshoot
    | spike
  )
  cut = overshoot | spike
  new_state = means._replace(
    learning_rate=new_alpha.astype(dtype),
    peak_rate=jnp.where(cut, new_alpha, jnp.maximum(state.peak_rate, new_alpha)).astype(
      dtype
    ),
    slow_rate=new_slow.astype(dtype),
    num_accepted=state.num_accepted + estimated.astype(jnp.int32),
    warming_up=state.warming_up & ~ends_warmup,
  )
  return new_state, status, slow
