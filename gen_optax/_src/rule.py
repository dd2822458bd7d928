r"""GeN's learning-rate rule: from measured slopes and curvatures to α.

Pure functions of scalars (no parameters, no ``value_fn``), so that the rule
can be tested from tables of numbers.  :func:`gen` measures, along a line
through parameter space, the slope at the line's start and the curvature,
each per unit length; this module averages them, turns their ratio into a
learning rate and bounds it.

With :math:`\sigma_i` the unit slope and :math:`\kappa_i = |c_i|` the unit
curvature of measurement :math:`i`, the running means are

.. math::
  \bar\sigma \leftarrow (1-w)\,\bar\sigma + w\,\sigma_i, \qquad
  \bar\kappa \leftarrow (1-w)\,\bar\kappa + w\,\kappa_i,

and :math:`D = -\bar\sigma / \bar\kappa` is the length of the best step along
a line, so :math:`\hat\alpha = D / \ell` for a direction of length
:math:`\ell` per unit learning rate.

**The weight follows the noise.**  Each measurement also brings the slope of
the same line from the gradient's own batch; the two disagree by the batch
noise (and by the gradient batch's bias).  With :math:`\bar\nu` the running
mean of the squared disagreement, the mean slope is known to a relative
standard error :math:`\epsilon` after

.. math::
  n = 1 + \frac{\bar\nu}{2\,\epsilon^2\,\bar\sigma^2}

measurements, and the weight is :math:`w = 1/\min(n, k + 1, n_{\max})` after
:math:`k` measurements.  A deterministic loss has :math:`\bar\nu = 0`, so
:math:`w = 1` and the rule is the exact greedy step; small noisy batches
average over many steps.  A fixed ``smoothing`` :math:`\gamma` instead gives
:math:`w = \max(1-\gamma, 1/(k+1))`.

**Bounds.**  While warming up, α may not pass
:math:`\alpha_0 g^{n+1}` after :math:`n` accepted estimates; the warm-up
ends (for good: ``warming_up`` in the state) at the first accepted estimate
below that cap.  Afterwards α falls by at most the trust ratio :math:`\rho`
per refresh and grows by at most :math:`\rho^{w}` — a factor :math:`\rho`
per averaging window — or by a fixed ``max_growth``.

Reference: Bu & Xu, *Gradient descent with generalized Newton's method*,
ICLR 2025, https://arxiv.org/abs/2407.02772
"""

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

# The longest averaging window, in measurements: measurements older than a
# few hundred steps describe another part of the loss landscape.
MAX_WINDOW = 100.0


class Status(enum.IntEnum):
  """Outcome of the last learning-rate refresh, stored in ``GeNInfo.status``.

  Every outcome but ``ACCEPTED`` keeps the previous learning rate.  The first
  three and ``POOR_FIT`` discard the measurement; ``NOT_DESCENT`` and
  ``NON_POSITIVE_CURVATURE`` describe the running means, which include it.
  """

  ACCEPTED = 0  #: the means' ratio updated the learning rate.
  INITIAL = 1  #: no refresh has happened yet.
  ZERO_DIRECTION = 2  #: the measured direction is exactly zero (or not yet there).
  NON_FINITE = 3  #: loss, slope or curvature is NaN or infinite.
  NOT_DESCENT = 4  #: mean slope ≥ 0: on average the line does not go downhill.
  NON_POSITIVE_CURVATURE = 5  #: mean curvature is zero: no minimum along the line.
  POOR_FIT = 6  #: probe fit's R² below ``min_r2`` (more than three points).


class RuleSettings(NamedTuple):
  """The constants of the rule (Python numbers, or tracers under inject_hyperparams)."""

  init_learning_rate: float
  min_learning_rate: float
  max_learning_rate: float
  smoothing: float | None  # None: the weight follows the noise
  relative_error: float  # ε, target relative error of the mean slope
  trust_ratio: float | None
  warmup_growth: float | None
  max_growth: float | None  # None: ρ per averaging window


class Measurement(NamedTuple):
  """One measurement of a line, per unit length (scalars of α's dtype)."""

  slope: jax.Array  # L'(start)[d̂], slope at the line's start along the unit direction
  curvature: jax.Array  # L''[d̂, d̂], may be negative
  disagreement: jax.Array  # slope minus the gradient batch's slope of the same line
  length: jax.Array  # ‖direction‖ per unit learning rate: α̂ = distance / length
  discard: jax.Array  # int32 Status: ACCEPTED, or why the measurement is unusable


class RuleState(NamedTuple):
  """What the rule remembers between refreshes."""

  learning_rate: jax.Array  #: scalar float, α
  mean_slope: jax.Array  #: scalar float, running mean of unit slopes
  mean_curvature: jax.Array  #: scalar float, running mean of abs(unit curvature)
  #: scalar float, running mean of squared disagreements (along the previous
  #: step, measured only with ``smoothing=None``; else 0)
  mean_noise: jax.Array
  num_measured: jax.Array  #: scalar int32, measurements in the means
  warming_up: jax.Array  #: scalar bool, whether α still climbs the warm-up cap


def init(init_learning_rate: float, dtype: jnp.dtype, warmup: bool) -> RuleState:
  """The rule before any measurement: α = ``init_learning_rate``."""
  # A fresh buffer per field: a state with shared buffers cannot be donated.
  return RuleState(
    learning_rate=jnp.asarray(init_learning_rate, dtype),
    mean_slope=jnp.zeros((), dtype),
    mean_curvature=jnp.zeros((), dtype),
    mean_noise=jnp.zeros((), dtype),
    num_measured=jnp.zeros((), jnp.int32),
    warming_up=jnp.asarray(warmup),
  )


def averaging_weight(state: RuleState, settings: RuleSettings) -> jax.Array:
  """The weight w of the next measurement in the running means.

  Fixed smoothing γ: w = max(1 − γ, 1/(k+1)).  Otherwise w = 1/n with
  n = 1 + ν̄ / (2ε²σ̄²) measurements for a relative error ε of the mean slope,
  at most k + 1 and ``MAX_WINDOW``.  The first measurement has weight 1.
  """
  dtype = state.mean_slope.dtype
  seen = state.num_measured.astype(dtype) + 1
  if settings.smoothing is not None:
    return jnp.maximum(1 - jnp.asarray(settings.smoothing, dtype), 1 / seen)
  signal = 2 * jnp.asarray(settings.relative_error, dtype) ** 2 * state.mean_slope**2
  window = 1 + state.mean_noise / jnp.where(signal > 0, signal, 1)
  window = jnp.where(signal > 0, window, MAX_WINDOW)
  return 1 / jnp.clip(window, 1, jnp.minimum(seen, MAX_WINDOW))


def bounds(
  state: RuleState, num_accepted: jax.Array, weight: jax.Array, settings: RuleSettings
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(lower, upper, warm-up cap) of the next α, before the clamp.

  The first accepted estimate is bound by the warm-up cap alone
  (``init_learning_rate`` is a guess, not a measurement).
  """
  alpha = state.learning_rate
  dtype = alpha.dtype
  inf = jnp.asarray(jnp.inf, dtype)
  first = num_accepted == 0
  lower, upper = -inf, inf
  growth = inf
  if settings.trust_ratio is not None:
    rho = jnp.asarray(settings.trust_ratio, dtype)
    lower, upper = alpha / rho, alpha * rho
    growth = rho**weight
  if settings.max_growth is not None:
    growth = jnp.asarray(settings.max_growth, dtype)
  cap = inf
  if settings.warmup_growth is not None:
    g = jnp.asarray(settings.warmup_growth, dtype)
    cap = settings.init_learning_rate * g ** (num_accepted.astype(dtype) + 1)
  upper = jnp.minimum(upper, jnp.where(state.warming_up, cap, alpha * growth))
  lower = jnp.where(first, -inf, lower)
  upper = jnp.where(first, cap, upper)
  return lower, upper, cap


def refresh(
  state: RuleState,
  num_accepted: jax.Array,
  measured: Measurement,
  settings: RuleSettings,
) -> tuple[RuleState, jax.Array, jax.Array]:
  """Enters one measurement; returns (new state, Status, weight used).

  ``num_accepted`` counts the earlier estimates that set α (the warm-up cap's
  exponent).
  """
  dtype = state.learning_rate.dtype
  usable = measured.discard == Status.ACCEPTED
  weight = averaging_weight(state, settings)

  def mean(old: jax.Array, new: jax.Array) -> jax.Array:
    # A discarded measurement (maybe NaN) leaves the mean as it is.
    new = jnp.where(usable, new, 0)
    return jnp.where(usable, (1 - weight) * old + weight * new, old)

  mean_slope = mean(state.mean_slope, measured.slope)
  # |c|: a concave line is measured by its magnitude, as saddle-free Newton does.
  mean_curvature = mean(state.mean_curvature, jnp.abs(measured.curvature))
  mean_noise = mean(state.mean_noise, measured.disagreement**2)
  status = jnp.select(
    [~usable, mean_slope >= 0, mean_curvature <= 0],
    [measured.discard, Status.NOT_DESCENT, Status.NON_POSITIVE_CURVATURE],
    Status.ACCEPTED,
  ).astype(jnp.int32)
  accepted = status == Status.ACCEPTED
  distance = -mean_slope / jnp.where(accepted, mean_curvature, 1)
  estimate = distance / jnp.where(accepted, measured.length, 1)
  lower, upper, cap = bounds(state, num_accepted, weight, settings)
  # The warm-up ends at the first accepted estimate below its cap, or when the
  # cap passes the largest learning rate.
  warming_up = state.warming_up & ~(
    accepted & ((estimate < cap) | (cap >= settings.max_learning_rate))
  )
  # The upper bound wins when the two cross (a warm-up cap under α/ρ).
  bounded = jnp.minimum(jnp.maximum(estimate, lower), upper)
  bounded = jnp.clip(bounded, settings.min_learning_rate, settings.max_learning_rate)
  new_state = RuleState(
    learning_rate=jnp.where(accepted, bounded, state.learning_rate).astype(dtype),
    mean_slope=mean_slope,
    mean_curvature=mean_curvature,
    mean_noise=mean_noise,
    num_measured=state.num_measured + usable.astype(jnp.int32),
    warming_up=warming_up,
  )
  return new_state, status, weight
