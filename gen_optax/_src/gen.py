"""GeN: the generalized-Newton learning rate of any optax optimizer."""

import difflib
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gen_optax._src import line as line_lib
from gen_optax._src import rule as rule_lib
from gen_optax._src.line import LineMeasurement, Mode
from gen_optax._src.rule import Status

SlopeFrom = Literal["value_fn", "gradient"]
SLOPE_SOURCES: tuple[str, ...] = get_args(SlopeFrom)
MeasureAlong = Literal["previous_step", "current_update"]
MEASURE_ALONG: tuple[str, ...] = get_args(MeasureAlong)

__all__ = ("GeNInfo", "GeNState", "Status", "find_state", "gen", "learning_rate")


class GeNInfo(NamedTuple):
  """Diagnostics of the last learning-rate refresh (kept between refreshes)."""

  raw_learning_rate: jax.Array  #: scalar float, this measurement's own estimate of α
  slope: jax.Array  #: scalar float, L'(θ)[d] along the measured direction d
  curvature: jax.Array  #: scalar float, L''(θ)[d, d] (may be negative)
  loss: jax.Array  #: scalar float, value_fn(θ)
  fit_r2: jax.Array  #: scalar float, R² of the probe fit (1 for exact modes)
  weight: jax.Array  #: scalar float, weight of this measurement in the running means
  status: jax.Array  #: scalar int32, a `Status`
  num_refreshes: jax.Array  #: scalar int32, refreshes so far
  #: scalar int32, refreshes that found the params moved by other than the
  #: step gen returned last (a transformation after gen in a chain)
  num_changed_steps: jax.Array

  @property
  def accepted(self) -> jax.Array:
    """Whether the last refresh updated the learning rate (bool scalar)."""
    return self.status == Status.ACCEPTED


class GeNState(NamedTuple):
  """State of :func:`gen`."""

  #: scalar int32, number of updates so far (named as optax names its
  #: counters, which shadows ``tuple.count`` as optax's states do)
  count: jax.Array  # type: ignore[assignment]
  rule: rule_lib.RuleState  #: α, the running means and the warm-up phase
  previous_step: optax.Updates  #: the last update returned (like params), or empty
  #: scalar float, the rate that scaled that step: it was this times the
  #: inner update (α·m(t), and the horizon's factor; 1 before any step)
  previous_rate: jax.Array
  inner_state: optax.OptState  #: state of the wrapped optimizer
  info: GeNInfo  #: diagnostics of the last refresh
  #: scalar float, ⟨θ + d, d⟩ for the returned step d: what ⟨θ', d⟩ must be
  #: at the next update if d was the step applied
  step_check: jax.Array
  #: scalar float, the rounding allowed in it (∞: nothing to check)
  step_check_tolerance: jax.Array

  @property
  def learning_rate(self) -> jax.Array:
    """α, in units of the inner update (scalar float, at least float32)."""
    return self.rule.learning_rate


def find_state(opt_state: optax.OptState) -> GeNState:
  """The one :class:`GeNState` inside ``opt_state``, however it is nested.

  Finds GeN's state inside ``optax.chain``, ``optax.inject_hyperparams``,
  :func:`multi_steps`, ``nnx.Optimizer.opt_state`` (as plain arrays with
  ``nnx.as_pure``) or any other pytree of optimizer states.

  Args:
    opt_state: the state of an optimizer that contains one :func:`gen`.

  Returns:
    That :class:`GeNState`.

  Raises:
    ValueError: if ``opt_state`` contains no GeN state, or more than one.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import gen_optax
    >>> tx = optax.chain(optax.clip(1.0), gen_optax.gen(optax.adam(1.0)))
    >>> state = gen_optax.find_state(tx.init(jnp.zeros(2)))
    >>> int(state.count)
    0

  References:
    Bu & Xu, *Gradient descent with generalized Newton's method*, ICLR 2025,
    https://arxiv.org/abs/2407.02772
  """
  is_gen = lambda x: isinstance(x, GeNState)  # noqa: E731
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_gen) if is_gen(x)]
  if len(found) != 1:
    raise ValueError(
      f"opt_state must contain exactly one GeNState, found {len(found)} in "
      f"opt_state of type {type(opt_state).__name__}."
    )
  return found[0]


def learning_rate(opt_state: optax.OptState) -> jax.Array:
  r"""GeN's learning rate :math:`\alpha` from any optimizer state containing it.

  Unlike ``optax.tree.get(opt_state, "learning_rate")``, this never confuses
  :math:`\alpha` with a ``learning_rate`` of the inner optimizer (under
  ``optax.inject_hyperparams``, or a line search's).  The step applied is
  :math:`m(t)\,\alpha\,u`.

  Args:
    opt_state: the state of an optimizer that contains one :func:`gen`.

  Returns:
    :math:`\alpha`, a float scalar (at least float32).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import gen_optax
    >>> inner = optax.inject_hyperparams(optax.adam)(learning_rate=1.0)
    >>> tx = gen_optax.gen(inner, init_learning_rate=0.01)
    >>> print(f"{gen_optax.learning_rate(tx.init(jnp.zeros(2))):.3g}")
    0.01

  References:
    Bu & Xu, *Gradient descent with generalized Newton's method*, ICLR 2025,
    https://arxiv.org/abs/2407.02772
  """
  return find_state(opt_state).learning_rate


def diagnostics(opt_state: optax.OptState) -> dict[str, float | int | str | bool]:
  """GeN's learning rate and last refresh as plain Python numbers, for logging.

  Reads the state outside ``jax.jit`` (it converts arrays to Python values):
  α, the outcome of the last refresh by name (a :class:`Status`), what that
  refresh measured and how far the rule has come.

  Args:
    opt_state: the state of an optimizer that contains one :func:`gen`.

  Returns:
    A dict of ``learning_rate``, ``status`` (the name), ``loss``, ``slope``,
    ``curvature``, ``raw_learning_rate`` (that measurement's own estimate),
    ``count`` (updates), ``num_refreshes``, ``num_accepted``,
    ``warming_up`` and ``num_changed_steps``.  Warns when a refresh found the
    params moved by other than the step gen returned (a transformation after
    gen in a chain), and says how to fix the chain.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import gen_optax
    >>> tx = gen_optax.gen(optax.sgd(1.0))
    >>> d = gen_optax.diagnostics(tx.init(jnp.zeros(2)))
    >>> print(d["status"], f"{d['learning_rate']:.3g}", d["count"])
    INITIAL 0.001 0
  """
  state = find_state(opt_state)
  info = state.info
  # .item() of an array: leaves may be wrapped (flax's OptArray in NNX).
  value = lambda leaf: np.asarray(leaf).item()  # noqa: E731
  result: dict[str, float | int | str | bool] = {
    "learning_rate": float(value(state.rule.learning_rate)),
    "status": Status(value(info.status)).name,
    "loss": float(value(info.loss)),
    "slope": float(value(info.slope)),
    "curvature": float(value(info.curvature)),
    "raw_learning_rate": float(value(info.raw_learning_rate)),
    "count": int(value(state.count)),
    "num_refreshes": int(value(info.num_refreshes)),
    "num_accepted": int(value(state.rule.num_accepted)),
    "warming_up": bool(value(state.rule.warming_up)),
    "num_changed_steps": int(value(info.num_changed_steps)),
  }
  if result["num_changed_steps"]:
    warnings.warn(
      _CHANGED_STEP_WARNING.format(count=result["num_changed_steps"]), stacklevel=2
    )
  return result


def _as_number(name: str, value: Any) -> float | None:
  """``float(value)``, or None for a traced value (``inject_hyperparams``)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a real number, got {name}={value!r}.") from None


# The same call in the loops users write first (flax's optimizers forward
# keyword arguments to tx.update).
_FRAMEWORK_FORMS = (
  " In Flax NNX: optimizer.update(model, grads, "
  "value_fn=gen_optax.nnx_value_fn(model, loss_fn, batch)). In Flax Linen "
  "(TrainState.apply_gradients does not forward it): "
  "gen_optax.linen_apply_gradients(state, grads=grads, "
  "value_fn=lambda p: loss_fn(p, batch))."
)


# Rounding allowed in the step check, in units of the accumulation dtype's
# epsilon times Σ|θ'ᵢdᵢ|: a pairwise sum of n terms errs by at most
# ~log₂(n)·ε·Σ|xᵢ|, and 64 covers any n below 2⁶⁴ with room for the order of
# the two sums (two programs).  A relative 1e-3 of ‖d‖² on top: a step
# changed by less than 0.1% changes no measurement that matters.
_CHECK_ROUNDING = 64
_CHECK_RELATIVE = 1e-3
# The check reads the small leaves only (biases, norms, small heads: every
# leaf of at most this many elements, or else the smallest leaf): the
# transformations that follow gen by mistake (a clip, a scale, a decay) act
# on every leaf, and reading all of them would cost passes over the params.
_CHECK_MAX_SIZE = 2**16


def _checked(tree: Any) -> list[Any]:
  """The leaves of a params-shaped tree that the step check reads."""
  leaves = jax.tree.leaves(tree)
  sizes = [int(np.size(leaf)) for leaf in leaves]
  chosen = [i for i, n in enumerate(sizes) if n <= _CHECK_MAX_SIZE]
  if not chosen:
    chosen = [int(np.argmin(sizes))]
  return [leaves[i] for i in chosen]


def _step_check(
  params: optax.Params,
  updates: optax.Updates,
  stored: optax.Updates,
  dtype: Any,
) -> tuple[jax.Array, jax.Array]:
  """(⟨θ + d, d̃⟩, its tolerance) for the step d returned and its stored copy d̃.

  ``θ + d`` is formed as ``optax.apply_updates`` forms it, so that a step
  applied unchanged gives the same elements, and only the order of the sum
  differs at the next update.  ``dtype``: that of the sums (α's).
  """
  params, updates, stored = _checked(params), _checked(updates), _checked(stored)
  low_precision = any(
    jnp.finfo(leaf.dtype).bits < 32
    for leaf in jax.tree.leaves(params)
    if jnp.issubdtype(leaf.dtype, jnp.floating)
  )
  if low_precision:
    # XLA may keep a bfloat16 sum in float32 inside a fusion (excess
    # precision); the params the next update sees were rounded.  Barriers
    # make this program round where the user's apply_updates rounds.
    updates = jax.lax.optimization_barrier(updates)
  moved = optax.apply_updates(params, updates)
  if low_precision:
    moved = jax.lax.optimization_barrier(moved)
  check = line_lib.tree_vdot(moved, stored, dtype)
  magnitude = line_lib.tree_vdot(
    jax.tree.map(jnp.abs, moved), jax.tree.map(jnp.abs, stored), dtype
  )
  eps = jnp.finfo(dtype).eps
  tolerance = (
    _CHECK_RELATIVE * line_lib.tree_vdot(stored, stored, dtype)
    + _CHECK_ROUNDING * eps * magnitude
  )
  return check, tolerance


def _step_changed(state: "GeNState", params: optax.Params, dtype: Any) -> jax.Array:
  """Whether the params moved by other than the step ``state`` stored (bool)."""
  observed = line_lib.tree_vdot(_checked(params), _checked(state.previous_step), dtype)
  # An infinite tolerance (nothing to check) or a NaN compares False.
  return jnp.abs(observed - state.step_check) > state.step_check_tolerance


# Said by diagnostics(), on the host: a callback in the compiled step would
# cost every step a host round trip (measured: +0.45 inner steps on the MLP).
_CHANGED_STEP_WARNING = (
  "gen_optax.gen: the params moved by other than the step gen returned "
  "({count} refreshes so far); a transformation after gen in a chain changes "
  "the step, and GeN's measurement along it is then wrong. Put gen last "
  "(outermost): e.g. gen(optax.chain(optax.clip_by_global_norm(1.0), "
  "optax.adamw(1.0))) instead of optax.chain(gen(optax.adamw(1.0)), "
  "optax.clip_by_global_norm(1.0))."
)


def _has_masked_nodes(tree: Any) -> bool:
  """Whether `tree` comes from inside `optax.masked`/`optax.partition`."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  return any(map(is_masked, jax.tree.leaves(tree, is_leaf=is_masked)))


GEN_EXTRA_ARGS = ("value_fn", "line", "refresh")


def _check_extra_args(extra_args: dict[str, Any], inner_takes_them: bool) -> None:
  """Raises TypeError for extra arguments that nothing would read.

  A name close to one of gen's own (``refersh``) is a typo whatever the
  inner; an inner without extra-argument support would drop any other.
  """
  for name in extra_args:
    close = difflib.get_close_matches(name, GEN_EXTRA_ARGS, n=1, cutoff=0.8)
    if close:
      raise TypeError(
        f"gen's update got an unknown extra argument {name}=...; did you mean "
        f"{close[0]}=...? gen takes {', '.join(GEN_EXTRA_ARGS)}."
      )
  if extra_args and not inner_takes_them:
    raise TypeError(
      f"gen's update got extra arguments {sorted(extra_args)} that neither gen "
      f"(which takes {', '.join(GEN_EXTRA_ARGS)}) nor its inner optimizer "
      "(a plain GradientTransformation) reads."
    )


def _holds_a_schedule(inner_state: optax.OptState) -> bool:
  """Whether the inner optimizer's state belongs to a learning-rate schedule.

  ``optax.adam(schedule)`` holds a ``ScaleByScheduleState``;
  ``inject_hyperparams`` a ``WrappedScheduleState`` per scheduled value.
  """
  names = {"ScaleByScheduleState", "WrappedScheduleState"}
  is_schedule = lambda x: type(x).__name__ in names  # noqa: E731
  leaves = jax.tree.leaves(inner_state, is_leaf=is_schedule)
  return any(map(is_schedule, leaves))


def _where(condition: jax.Array, x: Any, y: Any) -> Any:
  """``x`` where the scalar ``condition`` holds, else ``y``, leaf by leaf."""
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), x, y)


def to_measurement(
  loss: jax.Array,
  slope: jax.Array,
  curvature: jax.Array,
  norm: jax.Array,
  *,
  rate: jax.Array,
  lookback: bool,
  poor_fit: jax.Array,
) -> rule_lib.Measurement:
  """The rule's view of one measured line: per unit length, with why to discard.

  ``slope`` and ``curvature`` are along the measured direction (of norm
  ``norm``), which is ``rate`` times the inner update it came from.  Along the
  previous step, measured at its end, the quadratic model's slope at the
  start is s − |c|; along the current update, the start is where it was
  measured.
  """
  safe_norm = jnp.where(norm > 0, norm, 1)
  start_slope = slope - jnp.abs(curvature) if lookback else slope
  discard = jnp.select(
    [
      norm == 0,
      ~(jnp.isfinite(loss) & jnp.isfinite(slope) & jnp.isfinite(curvature)),
      poor_fit,
    ],
    [Status.ZERO_DIRECTION, Status.NON_FINITE, Status.POOR_FIT],
    Status.ACCEPTED,
  ).astype(jnp.int32)
  return rule_lib.Measurement(
    slope=start_slope / safe_norm,
    curvature=curvature / safe_norm**2,
    loss=loss,
    length=norm / jnp.where(rate > 0, rate, 1),
    discard=discard,
  )


def _varying(tree: Any, axis_name: str | tuple[str, ...]) -> Any:
  """Marks replicated values as varying over `axis_name` (shard_map's vma).

  Leaves that already vary are kept; JAX versions without varying-axis
  tracking need no marking.
  """
  pcast = getattr(jax.lax, "pcast", None)
  if pcast is None:
    return tree
  axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)

  def cast(x: jax.Array) -> jax.Array:
    missing = tuple(a for a in axes if a not in getattr(jax.typeof(x), "vma", axes))
    return pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(cast, tree)


def check_transformation(tx: Any, name: str, example: str) -> None:
  """Raises TypeError unless ``tx`` has callable ``init`` and ``update``."""
  if not (
    callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))
  ):
    raise TypeError(
      f"{name} must be an optax.GradientTransformation (e.g. {example}), "
      f"got {name}={tx!r}."
    )


def _validate(
  *,
  inner: Any,
  mode: Any,
  measure_along: Any,
  slope_from: Any,
  init_learning_rate: Any,
  min_learning_rate: Any,
  max_learning_rate: Any,
  smoothing: Any,
  trust_ratio: Any,
  warmup_growth: Any,
  max_growth: Any,
  refresh_every: Any,
  multiplier: Any,
  probe_multipliers: Any,
  min_r2: Any,
  axis_name: Any,
  step_dtype: Any,
  total_steps: Any,
) -> None:
  """Raises ValueError/TypeError naming the first bad argument of `gen`."""
  check_transformation(inner, "inner", "optax.adam(1.0)")
  line_lib.validate_mode(mode, probe_multipliers)
  if measure_along not in MEASURE_ALONG:
    raise ValueError(
      f"measure_along must be one of {MEASURE_ALONG}, "
      f"got measure_along={measure_along!r}."
    )
  if slope_from not in SLOPE_SOURCES:
    raise ValueError(
      f"slope_from must be one of {SLOPE_SOURCES}, got slope_from={slope_from!r}."
    )
  low = _as_number("min_learning_rate", min_learning_rate)
  high = _as_number("max_learning_rate", max_learning_rate)
  init = _as_number("init_learning_rate", init_learning_rate)
  if low is not None and not low > 0:
    raise ValueError(
      f"min_learning_rate must be > 0, got min_learning_rate={min_learning_rate!r}."
    )
  if high is not None and not high > 0:
    raise ValueError(
      f"max_learning_rate must be > 0, got max_learning_rate={max_learning_rate!r}."
    )
  if low is not None and high is not None and low > high:
    raise ValueError(
      "min_learning_rate must be <= max_learning_rate, got "
      f"min_learning_rate={min_learning_rate!r} > "
      f"max_learning_rate={max_learning_rate!r}."
    )
  if init is not None and not (
    (low is None or init >= low) and (high is None or init <= high)
  ):
    raise ValueError(
      "init_learning_rate must lie in [min_learning_rate, max_learning_rate] = "
      f"[{min_learning_rate!r}, {max_learning_rate!r}], "
      f"got init_learning_rate={init_learning_rate!r}."
    )
  if smoothing is None:
    raise TypeError(
      "smoothing must be a number in [0, 1): smoothing=None (the weight that "
      "followed the noise) was removed, see the CHANGELOG; got smoothing=None."
    )
  gamma = _as_number("smoothing", smoothing)
  if gamma is not None and not 0 <= gamma < 1:
    raise ValueError(f"smoothing must lie in [0, 1), got smoothing={smoothing!r}.")
  rho = growth = None
  if trust_ratio is not None:
    rho = _as_number("trust_ratio", trust_ratio)
    if rho is not None and not rho >= 1:
      raise ValueError(
        f"trust_ratio must be >= 1 or None, got trust_ratio={trust_ratio!r}."
      )
  if warmup_growth is not None:
    growth = _as_number("warmup_growth", warmup_growth)
    if growth is not None and not growth > 1:
      raise ValueError(
        f"warmup_growth must be > 1 or None, got warmup_growth={warmup_growth!r}."
      )
  if rho is not None and growth is not None and not growth < rho:
    # The first accepted estimate may exceed the cap α₀gⁿ by at most ρ: with
    # g ≥ ρ the cap never binds, and the warm-up would end at once.
    raise ValueError(
      "warmup_growth must be < trust_ratio (or one of them None), got "
      f"warmup_growth={warmup_growth!r} >= trust_ratio={trust_ratio!r}."
    )
  if max_growth is not None:
    limit = _as_number("max_growth", max_growth)
    if limit is not None and not limit >= 1:
      raise ValueError(
        f"max_growth must be >= 1 or None, got max_growth={max_growth!r}."
      )
  if isinstance(refresh_every, bool) or not isinstance(refresh_every, int):
    raise TypeError(
      "refresh_every must be a Python int (under optax.inject_hyperparams, pass "
      f"static_args=('refresh_every',)), got refresh_every={refresh_every!r}."
    )
  if refresh_every < 1:
    raise ValueError(
      f"refresh_every must be >= 1, got refresh_every={refresh_every!r}."
    )
  if not callable(multiplier):
    factor = _as_number("multiplier", multiplier)
    if factor is not None and not factor > 0:
      raise ValueError(
        "multiplier must be > 0 or an optax schedule (a function of the step "
        f"count), got multiplier={multiplier!r}."
      )
  if min_r2 is not None:
    r2 = _as_number("min_r2", min_r2)
    if r2 is not None and not r2 <= 1:
      raise ValueError(f"min_r2 must be <= 1 or None, got min_r2={min_r2!r}.")
  if step_dtype is not None:
    try:
      inexact = jnp.issubdtype(jnp.dtype(step_dtype), jnp.inexact)
    except TypeError:
      inexact = False
    if not inexact:
      raise TypeError(
        "step_dtype must be a floating dtype (e.g. jnp.bfloat16) or None, "
        f"got step_dtype={step_dtype!r}."
      )
  if total_steps is not None and not isinstance(total_steps, jax.core.Tracer):
    # A Python int, or an integer array (optax.inject_hyperparams makes one).
    integral = isinstance(total_steps, int) and not isinstance(total_steps, bool)
    if isinstance(total_steps, jax.Array | np.ndarray):
      integral = total_steps.ndim == 0 and jnp.issubdtype(
        total_steps.dtype, jnp.integer
      )
    if not integral:
      raise TypeError(
        "total_steps must be an int (the run's length in updates) or None, got "
        f"total_steps={total_steps!r}."
      )
    if int(total_steps) < 1:
      raise ValueError(f"total_steps must be >= 1, got total_steps={total_steps!r}.")
  if axis_name is not None and not isinstance(axis_name, str | tuple):
    raise TypeError(
      f"axis_name must be a str, a tuple of str or None, got axis_name={axis_name!r}."
    )


def gen(
  inner: optax.GradientTransformation,
  *,
  mode: Mode = "auto",
  measure_along: MeasureAlong = "previous_step",
  slope_from: SlopeFrom = "value_fn",
  init_learning_rate: float = 1e-3,
  min_learning_rate: float = 1e-6,
  max_learning_rate: float = 1.0,
  smoothing: float = 0.98,
  trust_ratio: float | None = 2.0,
  warmup_growth: float | None = 1.05,
  max_growth: float | None = 1.02,
  refresh_every: int = 1,
  multiplier: float | optax.Schedule = 1.0,
  probe_multipliers: Sequence[float] = (-1.0, 0.0, 1.0),
  min_r2: float | None = 0.99,
  axis_name: str | tuple[str, ...] | None = None,
  step_dtype: Any = None,
  total_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales any optax optimizer by the generalized-Newton learning rate.

  With :math:`u` the update of ``inner`` (parameters move by :math:`+\alpha
  u`), the loss along :math:`u` has the quadratic model
  :math:`L(\theta + \alpha u) \approx L(\theta) + \alpha L'(\theta)[u] +
  \tfrac12 \alpha^2 u^\top H u`, minimised by the generalized Newton step

  .. math::
    \alpha^\star = -\frac{L'(\theta)[u]}{u^\top H u}.

  **Where it measures.**  By default GeN measures, on ``value_fn``, the loss
  along the step it took last, at the current point: that step was built from
  earlier batches, so ``value_fn`` may close over the gradient's own batch
  (one batch per step).  The curvature is exact: ``jax.jvp`` over
  ``jax.jvp``, or over ``jax.grad`` where an operation has no forward-mode
  rule (``mode="auto"``); other modes in docs/modes.md.  On a quadratic with SGD the
  result is the Barzilai–Borwein step (the example below).

  **The rule.**  α comes from running means of the measured slopes and
  curvatures per unit length, starts at ``init_learning_rate`` and climbs a
  geometric warm-up, then moves by at most ``trust_ratio`` per refresh and
  grows by at most ``max_growth``.  It reacts when its steps hurt: it is cut
  when the recent steps are longer than their best length beyond the noise
  (``Status.OVERSHOOT``); a loss far above its running level cuts α and takes
  the last step back (``Status.LOSS_SPIKE``); a step is never longer than
  ``trust_ratio`` times the one α was measured for.  Nothing raises inside
  ``jit``; ``state.info`` records every refresh.  The derivation, each
  reaction and the screens behind the defaults: docs/method.md.

  **Units.**  :math:`\alpha^\star u` does not depend on the scale of
  :math:`u`: build the inner optimizer with learning rate ``1.0``
  (``gen(optax.adamw(1.0))``) and α *is* the learning rate.

  **Schedules.**  The step applied is :math:`m(t)\,\alpha\,u` with
  :math:`m` the ``multiplier``, which α never absorbs.  ``total_steps`` gives
  GeN the run's length: the step then decays to zero by the end of the run
  (docs/method.md, "A horizon").  A schedule inside ``inner`` is cancelled by
  α (gen warns).

  **Put gen last.**  The step gen returns must be the step applied: chain
  other transformations *inside*, e.g.
  ``gen(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1.0)))``.

  Args:
    inner: the optimizer whose update is scaled, e.g. ``optax.adamw(1.0)``.
    mode: how the loss along the line is measured: ``"auto"`` (exact:
      forward-over-forward, or forward-over-reverse where an operation has
      no forward-mode rule; :func:`auto_mode` tells which),
      ``"forward-over-reverse"``, ``"forward-over-forward"``, ``"probes"``
      or ``"one-probe"`` (forward passes only); see docs/modes.md.
    measure_along: ``"previous_step"`` (one batch suffices) or
      ``"current_update"`` (give ``value_fn`` an independent batch).
    slope_from: ``"value_fn"`` or ``"gradient"``: which slope the model takes.
    init_learning_rate: α until the first estimate, and the warm-up's start.
    min_learning_rate: lower clamp of α, > 0.
    max_learning_rate: upper clamp of α.
    smoothing: :math:`\gamma \in [0, 1)`, weight of the past in the running
      means (1 / (1 − γ) refreshes of memory).
    trust_ratio: :math:`\rho \geq 1`, the most α moves per refresh and the
      size of every reaction; ``None``: the bare greedy step, no reactions.
    warmup_growth: :math:`g > 1`, growth per refresh of the warm-up cap
      :math:`\alpha_0 g^n`; ``None`` disables the warm-up.
    max_growth: :math:`r \geq 1`, the most α may grow per refresh after the
      warm-up; ``None`` leaves only ``trust_ratio`` to bound it.
    refresh_every: recompute α every this many steps; steps in between reuse
      it and do no curvature work (``jax.lax.cond``).
    multiplier: :math:`m(t) > 0`, a number or an optax schedule of the step
      count; a number may be injected with ``optax.inject_hyperparams``.
    probe_multipliers: the probe points :math:`s_i` of ``mode="probes"``.
    min_r2: the least :math:`R^2` a probe fit of more than three points must
      reach; ``None`` disables the gate.
    axis_name: under ``shard_map``/``pmap``, the mapped axis name(s) over
      which measurements are averaged (not needed under ``jax.jit``).
    step_dtype: dtype of the stored previous step (one params-sized buffer);
      ``None`` keeps the params' dtypes.
    total_steps: the run's length in updates, or ``None`` (no horizon).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``(grads, state, params, *, value_fn=None, line=None, refresh=None,
    **extra_args)``: ``value_fn(params) -> scalar loss``, or ``line`` from
    :func:`value_and_grad`; neither is needed with ``refresh=False``, a
    static bool that overrides ``refresh_every`` for the call (two compiled
    steps instead of a ``lax.cond``).  Other extra arguments go to
    ``inner``.  Its state is a :class:`GeNState`.

  Raises:
    ValueError: for out-of-range or unknown settings, naming the argument.
    TypeError: for arguments of the wrong kind.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gen_optax
    >>> A = jnp.array([[3.0, 0.5], [0.5, 1.0]])
    >>> loss = lambda p: 0.5 * p @ A @ p
    >>> tx = gen_optax.gen(optax.sgd(1.0), smoothing=0.0, warmup_growth=None,
    ...                    trust_ratio=None, init_learning_rate=0.1)
    >>> params = jnp.array([1.0, 1.0])
    >>> state, history = tx.init(params), []
    >>> for _ in range(2):
    ...   grads = jax.grad(loss)(params)
    ...   history.append((params, grads))
    ...   updates, state = tx.update(grads, state, params, value_fn=loss)
    ...   params = optax.apply_updates(params, updates)
    >>> # The 2nd step's α is the best step along the 1st: on a quadratic with
    >>> # SGD, the Barzilai–Borwein step ‖Δθ‖² / ⟨Δθ, Δg⟩.
    >>> (p0, g0), (p1, g1) = history
    >>> dp, dg = p1 - p0, g1 - g0
    >>> print(f"{state.learning_rate:.4f} {dp @ dp / (dp @ dg):.4f}")
    0.3277 0.3277

  References:
    Zhiqi Bu and Shiyun Xu, *Gradient descent with generalized Newton's
    method*, ICLR 2025, https://arxiv.org/abs/2407.02772
  """
  _validate(
    inner=inner,
    mode=mode,
    measure_along=measure_along,
    slope_from=slope_from,
    init_learning_rate=init_learning_rate,
    min_learning_rate=min_learning_rate,
    max_learning_rate=max_learning_rate,
    smoothing=smoothing,
    trust_ratio=trust_ratio,
    warmup_growth=warmup_growth,
    max_growth=max_growth,
    refresh_every=refresh_every,
    multiplier=multiplier,
    probe_multipliers=probe_multipliers,
    min_r2=min_r2,
    axis_name=axis_name,
    step_dtype=step_dtype,
    total_steps=total_steps,
  )
  inner_takes_extra_args = isinstance(inner, optax.GradientTransformationExtraArgs)
  inner = optax.with_extra_args_support(inner)
  gate_fit = mode == "probes" and min_r2 is not None and len(probe_multipliers) > 3
  lookback = measure_along == "previous_step"
  settings = rule_lib.RuleSettings(
    init_learning_rate=init_learning_rate,
    min_learning_rate=min_learning_rate,
    max_learning_rate=max_learning_rate,
    smoothing=smoothing,
    trust_ratio=trust_ratio,
    warmup_growth=warmup_growth,
    max_growth=max_growth,
  )

  def init_fn(params: optax.Params) -> GeNState:
    line_lib.check_floating(params)
    inner_state = inner.init(params)
    if _holds_a_schedule(inner_state):
      warnings.warn(
        "the optimizer inside gen has a learning-rate schedule: GeN's α "
        "absorbs the scale of the inner update, so the schedule is cancelled. "
        "Build the inner optimizer with learning rate 1.0 and pass the "
        "schedule as gen(..., multiplier=schedule).",
        UserWarning,
        stacklevel=2,
      )
    dtype = line_lib.scalar_dtype(params)
    # A fresh buffer per field: a state with shared buffers cannot be donated.
    nan = lambda: jnp.full((), jnp.nan, dtype)  # noqa: E731
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
    return GeNState(
      count=zero(),
      rule=rule_lib.init(init_learning_rate, dtype, warmup_growth is not None),
      # Zero until the first step: a zero direction is discarded, so the
      # first refresh keeps init_learning_rate.
      previous_step=(
        optax.tree.zeros_like(params, step_dtype) if lookback else optax.EmptyState()
      ),
      previous_rate=jnp.ones((), dtype),
      inner_state=inner_state,
      info=GeNInfo(
        raw_learning_rate=nan(),
        slope=nan(),
        curvature=nan(),
        loss=nan(),
        fit_r2=nan(),
        weight=nan(),
        status=jnp.asarray(Status.INITIAL, jnp.int32),
        num_refreshes=zero(),
        num_changed_steps=zero(),
      ),
      step_check=jnp.zeros((), dtype),
      step_check_tolerance=jnp.full((), jnp.inf, dtype),
    )

  def refresh_rule(
    state: GeNState,
    value_fn: Callable[[Any], jax.Array] | None,
    line: LineMeasurement | None,
    params: optax.Params,
    grads: optax.Updates,
    update: optax.Updates | None,
  ) -> tuple[rule_lib.RuleState, GeNInfo]:
    """Measures the loss along a line and enters it into the rule.

    ``"previous_step"``: the line of the last step d (built from earlier
    batches, so free of this batch's noise), measured at its end θ;
    ``"current_update"``: the line of this update u from θ.  ``line``, when
    given, is the measurement along the previous step, made with the gradient.
    """
    alpha, info = state.learning_rate, state.info
    dtype = alpha.dtype
    changed = _step_changed(state, params, dtype) if lookback else jnp.asarray(False)
    direction = state.previous_step if lookback else update
    if axis_name is not None:
      # Under shard_map the data vary across devices while params and the
      # direction are replicated; jvp of grad then mixes the two.
      params, direction = _varying((params, direction), axis_name)
    if line is None:
      assert value_fn is not None  # checked by update_fn
      line = line_lib.measure_line(
        value_fn,
        params,
        direction,
        mode=mode,
        step_size=jnp.ones((), dtype) if lookback else alpha,
        probe_multipliers=probe_multipliers,
        gradient=grads if slope_from == "gradient" else None,
      )
    loss, slope, curvature, fit_r2 = (jnp.asarray(x, dtype) for x in line)
    if slope_from == "gradient":
      slope = line_lib.tree_vdot(grads, direction, dtype)
    if axis_name is not None:
      loss, slope, curvature = jax.lax.pmean((loss, slope, curvature), axis_name)
    norm = jnp.sqrt(line_lib.tree_vdot(direction, direction, dtype))
    measured = to_measurement(
      loss,
      slope,
      curvature,
      norm,
      # Along the previous step d = r₋u₋ (r₋ = m₋α₋): u₋ has length ‖d‖/r₋.
      rate=state.previous_rate if lookback else jnp.ones((), dtype),
      lookback=lookback,
      poor_fit=(
        ~(fit_r2 >= min_r2)  # NaN R² fails too
        if gate_fit and min_r2 is not None
        else jnp.asarray(False)
      ),
    )
    rule, status, weight = rule_lib.refresh(state.rule, measured, settings)
    new_info = GeNInfo(
      raw_learning_rate=-measured.slope
      / (jnp.abs(measured.curvature) * measured.length),
      slope=slope,
      curvature=curvature,
      loss=loss,
      fit_r2=fit_r2,
      weight=weight,
      status=status,
      num_refreshes=optax.safe_increment(info.num_refreshes),
      num_changed_steps=info.num_changed_steps + changed.astype(jnp.int32),
    )
    return rule, new_info

  def update_fn(
    updates: optax.Updates,
    state: GeNState,
    params: optax.Params | None = None,
    *,
    value_fn: Callable[[Any], jax.Array] | None = None,
    line: LineMeasurement | None = None,
    refresh: bool | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, GeNState]:
    if refresh is not None and not isinstance(refresh, bool):
      raise TypeError(
        "refresh must be a Python bool known at trace time (mark it static in "
        "jax.jit) or None to follow refresh_every, got "
        f"refresh={refresh!r}."
      )
    if params is None:
      raise ValueError(
        "gen needs the current parameters: call "
        "tx.update(grads, state, params, value_fn=...)." + _FRAMEWORK_FORMS
      )
    if not isinstance(state, GeNState):
      raise TypeError(
        "state must be the GeNState made by this transformation's init, got "
        f"state of type {type(state).__name__}."
      )
    line_lib.check_like(updates, "updates (the gradient)", params, "params")
    if line is not None:
      if not isinstance(line, LineMeasurement):
        raise TypeError(
          "line must be the LineMeasurement that gen_optax.value_and_grad "
          f"returns, got line={line!r}."
        )
      if not lookback:
        raise ValueError(
          "line= is the measurement along the previous step, made with the "
          "gradient; with measure_along='current_update' the direction is "
          "only known after the gradient: pass value_fn instead."
        )
    elif refresh is not False and not callable(value_fn):
      raise TypeError(
        "gen needs the loss along a line: call tx.update(grads, state, params, "
        "value_fn=lambda p: loss(p, batch)), or pass line= from "
        f"gen_optax.value_and_grad; got value_fn={value_fn!r}." + _FRAMEWORK_FORMS
      )
    if _has_masked_nodes(params):
      raise ValueError(
        "gen received params with optax.MaskedNode leaves: it sits inside "
        "optax.masked or optax.partition, where value_fn would see only part of "
        "the parameters. Put gen outside and the masking inside: "
        "gen(optax.partition({...}, labels)) or gen(optax.masked(inner, mask))."
      )
    _check_extra_args(extra_args, inner_takes_extra_args)
    grads = updates
    if value_fn is not None:
      extra_args["value_fn"] = value_fn  # inner line searches take it too

    update, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
    clips = lookback and settings.trust_ratio is not None

    def do_refresh() -> tuple[Any, GeNInfo, jax.Array, jax.Array]:
      rule, info = refresh_rule(state, value_fn, line, params, grads, update)
      scale = jnp.ones((), rule.learning_rate.dtype)
      if clips:
        # A burst: an update far longer than the one α was measured for (a
        # rare large gradient in Adam's moments) would step far beyond the
        # measured line.  Its step is bounded by ρ times the measured one.
        dtype = scale.dtype
        norm = jnp.sqrt(line_lib.tree_vdot(update, update, dtype))
        previous = rule.last_length
        limit = jnp.asarray(settings.trust_ratio, dtype) * previous
        scale = jnp.where((previous > 0) & (norm > limit), limit / norm, 1)
      return rule, info, jnp.asarray(True), scale

    def keep() -> tuple[Any, GeNInfo, jax.Array, jax.Array]:
      one = jnp.ones((), state.rule.learning_rate.dtype)
      return state.rule, state.info, jnp.asarray(False), one

    if refresh is not None:
      rule, info, did_refresh, scale = do_refresh() if refresh else keep()
    elif refresh_every == 1:
      rule, info, did_refresh, scale = do_refresh()
    else:
      # Only the taken branch runs: steps between refreshes pay no curvature.
      rule, info, did_refresh, scale = jax.lax.cond(
        state.count % refresh_every == 0, do_refresh, keep
      )
    factor = multiplier(state.count) if callable(multiplier) else multiplier
    factor = jnp.asarray(factor, rule.learning_rate.dtype) * scale
    rate = rule.learning_rate
    if total_steps is not None:
      # A horizon: the peak α found so far, decayed by a cosine to zero at
      # total_steps.  Not α itself: shorter steps let the sharpness grow,
      # which lowers the measured α, and a decayed α would decay again.
      done = jnp.minimum(state.count, total_steps).astype(rate.dtype)
      shape = 0.5 * (1 + jnp.cos(jnp.pi * done / total_steps))
      rate, factor = rule.peak_rate, factor * shape
    step_size = rate * factor
    new_updates = jax.tree.map(lambda u: (step_size * u).astype(u.dtype), update)
    previous_step = state.previous_step
    if lookback:
      # The next refresh measures along this step; lookback assumes that it
      # is the step applied (gen last in a chain).
      previous_step = optax.tree.cast(new_updates, step_dtype)
    if refresh is not False and settings.trust_ratio is not None:
      # A loss spike: the batch's gradient does not enter the inner state, and
      # the step that led here is taken back (along the current update there
      # is none to take back: the step is zero).  The next refresh then has
      # no direction to measure and keeps the cut α.
      spiked = did_refresh & (info.status == Status.LOSS_SPIKE)
      inner_state = _where(spiked, state.inner_state, inner_state)
      if lookback:
        back = jax.tree.map(
          lambda d, u: (-d).astype(u.dtype), state.previous_step, new_updates
        )
        new_updates = _where(spiked, back, new_updates)
        previous_step = _where(
          spiked, optax.tree.zeros_like(previous_step), previous_step
        )
      else:
        new_updates = _where(spiked, optax.tree.zeros_like(new_updates), new_updates)
    check, tolerance = state.step_check, state.step_check_tolerance
    if lookback:
      # What the next refresh checks (gen last: the step applied is d).
      def make_check() -> tuple[jax.Array, jax.Array]:
        return _step_check(params, new_updates, previous_step, step_size.dtype)

      # Only before a refresh: the steps between pay nothing for it.  Under
      # static flags the next step's flag is unknown, and a step that does
      # not refresh makes no check (a static loop is checked where a refresh
      # follows a refresh).
      unchecked = (jnp.zeros_like(step_size), jnp.full_like(step_size, jnp.inf))
      if refresh is False:
        check, tolerance = unchecked
      elif refresh is None and refresh_every > 1:
        check, tolerance = jax.lax.cond(
          (state.count + 1) % refresh_every == 0, make_check, lambda: unchecked
        )
      else:
        check, tolerance = make_check()
    new_state = GeNState(
      count=optax.safe_increment(state.count),
      rule=rule,
      previous_step=previous_step,
      previous_rate=step_size if lookback else state.previous_rate,
      inner_state=inner_state,
      info=info,
      step_check=check,
      step_check_tolerance=tolerance,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
