"""GeN: the generalized-Newton learning rate of any optax optimizer."""

import warnings
from collections.abc import Callable
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gen_optax._src import line as line_lib
from gen_optax._src import measurement as measurement_lib
from gen_optax._src import rule as rule_lib
from gen_optax._src import step_check as step_check_lib
from gen_optax._src.checks import (
  check_floating,
  check_range,
  check_transformation,
)
from gen_optax._src.line import LineMeasurement, Mode, Probes
from gen_optax._src.rule import Status
from gen_optax._src.state import GeNInfo, GeNState, initial_info, refreshed_info
from gen_optax._src.update_checks import check_extra_args, check_update_call

SlopeFrom = Literal["value_fn", "gradient"]
SLOPE_SOURCES: tuple[str, ...] = get_args(SlopeFrom)
MeasureAlong = Literal["previous_step", "current_update"]
MEASURE_ALONG: tuple[str, ...] = get_args(MeasureAlong)

__all__ = ("gen",)


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


def _burst_scale(
  update: optax.Updates, last_length: jax.Array, trust_ratio: Any
) -> jax.Array:
  """The factor that bounds a burst to ρ times the step α was measured for.

  ρ is ``trust_ratio`` (a number, or a tracer).  An update far longer than
  the one α was measured for (a rare large gradient in Adam's moments) would
  step far beyond the measured line.
  """
  dtype = last_length.dtype
  norm = jnp.sqrt(line_lib.tree_vdot(update, update, dtype))
  limit = jnp.asarray(trust_ratio, dtype) * last_length
  return jnp.where((last_length > 0) & (norm > limit), limit / norm, 1)


def _horizon(count: jax.Array, total_steps: Any, dtype: Any) -> jax.Array:
  """The cosine from 1 at the first update to 0 at ``total_steps``."""
  done = jnp.minimum(count, total_steps).astype(dtype)
  return 0.5 * (1 + jnp.cos(jnp.pi * done / total_steps))


def _refresh_or_keep(
  refresh: bool | None,
  refresh_every: int,
  count: jax.Array,
  do_refresh: Callable[[], Any],
  keep: Callable[[], Any],
) -> Any:
  """``do_refresh()`` on the steps that refresh, else ``keep()``.

  The static ``refresh`` flag decides at trace time; otherwise every
  ``refresh_every``-th step, under ``lax.cond``, so that only the taken branch
  runs: the steps between refreshes pay no curvature.
  """
  if refresh is not None:
    return do_refresh() if refresh else keep()
  if refresh_every == 1:
    return do_refresh()
  return jax.lax.cond(count % refresh_every == 0, do_refresh, keep)


def _step_size(
  rule: rule_lib.RuleState,
  count: jax.Array,
  multiplier: float | optax.Schedule,
  total_steps: Any,
  burst: jax.Array,
) -> jax.Array:
  """α times the multiplier and the burst bound (and the horizon's cosine)."""
  rate = rule.learning_rate
  factor = multiplier(count) if callable(multiplier) else multiplier
  factor = jnp.asarray(factor, rate.dtype) * burst
  if total_steps is not None:
    # A horizon: the peak α found so far, decayed by a cosine to zero at
    # total_steps.  Not α itself: shorter steps let the sharpness grow,
    # which lowers the measured α, and a decayed α would decay again.
    rate = rule.peak_rate
    factor = factor * _horizon(count, total_steps, rate.dtype)
  return rate * factor


def _take_back(
  spiked: jax.Array,
  state: GeNState,
  inner_state: optax.OptState,
  updates: optax.Updates,
) -> tuple[optax.OptState, optax.Updates]:
  """After a loss spike: the old inner state, and the step that led here back.

  The spike's gradient does not enter the inner state.  Measuring along the
  current update there is no step to take back: the update is zero.
  """
  if isinstance(state.previous_step, optax.EmptyState):
    back = optax.tree.zeros_like(updates)
  else:
    back = jax.tree.map(lambda d, u: (-d).astype(u.dtype), state.previous_step, updates)
  return _where(spiked, state.inner_state, inner_state), _where(spiked, back, updates)


def _unchecked(like: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The step check that checks nothing (tolerance ∞)."""
  return jnp.zeros_like(like), jnp.full_like(like, jnp.inf)


def _store(
  params: optax.Params,
  updates: optax.Updates,
  step_size: jax.Array,
  spiked: jax.Array,
  step_dtype: Any,
  *,
  checked: bool,
) -> tuple[optax.Updates, jax.Array, jax.Array]:
  """The step to store for the next refresh, and its step check.

  A spike's step back is no direction: zero, and the next refresh keeps
  the cut α.
  """
  stored = optax.tree.cast(updates, step_dtype)
  stored = _where(spiked, optax.tree.zeros_like(stored), stored)
  if not checked:
    return stored, *_unchecked(step_size)
  return stored, *step_check_lib.step_check(params, updates, stored, step_size.dtype)


def _check_settings(
  measure_along: Any,
  slope_from: Any,
  refresh_every: Any,
  multiplier: Any,
  axis_name: Any,
  step_dtype: Any,
  total_steps: Any,
) -> None:
  """Raises ValueError/TypeError naming the first bad one of gen's own settings.

  The rule's settings are checked in ``rule.py``, the line's in ``line.py``.
  """
  for name, value, allowed in (
    ("measure_along", measure_along, MEASURE_ALONG),
    ("slope_from", slope_from, SLOPE_SOURCES),
  ):
    if value not in allowed:
      raise ValueError(f"{name} must be one of {allowed}, got {name}={value!r}.")
  if isinstance(refresh_every, bool) or not isinstance(refresh_every, int):
    raise TypeError(
      "refresh_every must be a Python int (under optax.inject_hyperparams, pass "
      f"static_args=('refresh_every',)), got refresh_every={refresh_every!r}."
    )
  check_range("refresh_every", refresh_every, lambda k: k >= 1, "be >= 1")
  if not callable(multiplier):
    check_range(
      "multiplier",
      multiplier,
      lambda m: m > 0,
      "be > 0 or an optax schedule (a function of the step count)",
    )
  if axis_name is not None and not isinstance(axis_name, str | tuple):
    raise TypeError(
      f"axis_name must be a str, a tuple of str or None, got axis_name={axis_name!r}."
    )
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
    check_range("total_steps", total_steps, lambda n: n >= 1, "be >= 1")


def gen(
  inner: optax.GradientTransformation,
  *,
  mode: Mode | Probes = "auto",
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

  **Where it measures.**  By default along the step it took last, at the
  current point, on ``value_fn``: that step was built from earlier batches,
  so ``value_fn`` may close over the gradient's own batch (one batch per
  step).  The curvature is exact, ``jax.jvp`` over ``jax.jvp`` (or over
  ``jax.grad`` where an operation has no forward-mode rule); other modes in
  docs/modes.md.

  **The rule.**  α comes from running means of the measured slopes and
  curvatures, climbs a warm-up from ``init_learning_rate``, moves by at most
  ``trust_ratio`` per refresh and is cut when its steps hurt
  (``Status.OVERSHOOT``, ``Status.LOSS_SPIKE``).  Nothing raises inside
  ``jit``; ``state.info`` records every refresh.  The derivation and the
  evidence behind each part: docs/method.md.

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
      or ``"one-probe"`` (forward passes only), or a :class:`Probes` with
      the probe points and the fit's least :math:`R^2`; see docs/modes.md.
    measure_along: ``"previous_step"`` (one batch suffices) or
      ``"current_update"`` (give ``value_fn`` an independent batch).
    slope_from: ``"value_fn"`` or ``"gradient"`` (⟨g, d⟩: the forward-only
      ``"one-probe"`` then needs no derivative of ``value_fn``).
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
    refresh_every: recompute α every this many steps (``jax.lax.cond``);
      steps in between reuse it, do no curvature work and (but for the
      last) store no step.
    multiplier: :math:`m(t) > 0`, a number or an optax schedule of the step
      count; a number may be injected with ``optax.inject_hyperparams``.
    axis_name: under ``shard_map``/``pmap``, the mapped axis name(s) over
      which measurements are averaged (not needed under ``jax.jit``).
    step_dtype: dtype of the stored previous step (one params-sized buffer);
      ``None`` keeps the params' dtypes.
    total_steps: the run's length in updates, or ``None`` (no horizon).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``(grads, state, params, *, value_fn=None, line=None, refresh=None,
    refresh_next=None, **extra_args)``: ``value_fn(params) -> scalar loss``,
    or ``line`` from :func:`value_and_grad`; neither is needed with
    ``refresh=False``, a static bool in place of ``refresh_every``'s
    ``lax.cond``.  ``refresh_next``, a static bool, says whether the next
    step refreshes: only then does this one store itself for it (a refresh
    after a step that did not is discarded, ``Status.STALE_STEP``).  A
    static loop passes ``refresh=(step % k == 0)`` and ``refresh_next=((step
    + 1) % k == 0)``.  Other extra arguments go to ``inner``.  Its state is
    a :class:`GeNState`.

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
  check_transformation(inner, "inner", "optax.adam(1.0)")
  mode_name, probes = line_lib.resolve_mode(mode)
  settings = rule_lib.RuleSettings(
    init_learning_rate=init_learning_rate,
    min_learning_rate=min_learning_rate,
    max_learning_rate=max_learning_rate,
    smoothing=smoothing,
    trust_ratio=trust_ratio,
    warmup_growth=warmup_growth,
    max_growth=max_growth,
  )
  rule_lib.check_settings(settings)
  _check_settings(  # gen's own settings, in the order of its signature
    measure_along,
    slope_from,
    refresh_every,
    multiplier,
    axis_name,
    step_dtype,
    total_steps,
  )
  inner_takes_extra_args = isinstance(inner, optax.GradientTransformationExtraArgs)
  inner = optax.with_extra_args_support(inner)
  gate_fit = (
    mode_name == "probes" and probes.min_r2 is not None and len(probes.multipliers) > 3
  )
  lookback = measure_along == "previous_step"
  stores_by_schedule = lookback and refresh_every > 1
  clips = lookback and settings.trust_ratio is not None

  def init_fn(params: optax.Params) -> GeNState:
    check_floating(params)
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
    return GeNState(
      count=jnp.zeros((), jnp.int32),
      rule=rule_lib.init(init_learning_rate, dtype, warmup_growth is not None),
      # Zero until the first step: a zero direction is discarded, so the
      # first refresh keeps init_learning_rate.
      previous_step=(
        optax.tree.zeros_like(params, step_dtype) if lookback else optax.EmptyState()
      ),
      stored_at=jnp.full((), -1, jnp.int32),
      previous_rate=jnp.ones((), dtype),
      inner_state=inner_state,
      info=initial_info(dtype),
      step_check=jnp.zeros((), dtype),
      step_check_tolerance=jnp.full((), jnp.inf, dtype),
    )

  def refresh_rule(
    state: GeNState,
    value_fn: Callable[[Any], jax.Array] | None,
    line: LineMeasurement | None,
    params: optax.Params,
    grads: optax.Updates,
    update: optax.Updates,
  ) -> tuple[rule_lib.RuleState, GeNInfo, jax.Array, jax.Array]:
    """Measures the loss along a line and enters it into the rule.

    Returns the rule's state, the diagnostics, the factor that bounds the
    coming step's burst, and whether the loss spiked.
    """
    dtype = state.learning_rate.dtype
    line, norm = measurement_lib.measure(
      value_fn,
      line,
      params,
      grads,
      state.previous_step if lookback else update,
      learning_rate=state.learning_rate,
      lookback=lookback,
      mode=mode,
      slope_from=slope_from,
      axis_name=axis_name,
    )
    measured = measurement_lib.to_measurement(
      line,
      norm,
      # Along the previous step d = r₋u₋ (r₋ = m₋α₋): u₋ has length ‖d‖/r₋.
      rate=state.previous_rate if lookback else jnp.ones((), dtype),
      lookback=lookback,
      min_r2=probes.min_r2 if gate_fit else None,
      stale=state.stored_at != state.count - 1 if lookback else False,
    )
    rule, status, weight = rule_lib.refresh(state.rule, measured, settings)
    changed = jnp.asarray(False)
    if lookback:
      changed = step_check_lib.step_changed(
        params, state.previous_step, state.step_check, state.step_check_tolerance, dtype
      )
    info = refreshed_info(state.info, line, measured, status, weight, changed)
    burst = jnp.ones((), dtype)
    if clips:
      burst = _burst_scale(update, rule.last_length, settings.trust_ratio)
    return rule, info, burst, status == Status.LOSS_SPIKE

  def store_step(
    state: GeNState,
    params: optax.Params,
    applied: optax.Updates,
    step_size: jax.Array,
    spiked: jax.Array,
    refresh: bool | None,
    refresh_next: bool | None,
  ) -> tuple[optax.Updates, jax.Array, jax.Array, jax.Array]:
    """The step the next refresh measures along, its count, and its check.

    Put last, gen's step is the step applied; the check tells if it was.
    """
    if not lookback:
      return (
        state.previous_step,
        state.stored_at,
        state.step_check,
        state.step_check_tolerance,
      )

    def store(checked: bool) -> tuple[optax.Updates, jax.Array, jax.Array]:
      return _store(params, applied, step_size, spiked, step_dtype, checked=checked)

    def keep() -> tuple[optax.Updates, jax.Array, jax.Array]:
      return state.previous_step, *_unchecked(step_size)

    # Only a step that a refresh follows needs to store itself (one
    # params-sized write); the others pass the stored step through.  Told
    # statically, the choice costs nothing; by the schedule it is a
    # lax.cond, whose operand XLA materialises.
    if refresh_next is not None:
      stores: Any = refresh_next
      stored = store(checked=True) if refresh_next else keep()
    elif stores_by_schedule:
      stores = (state.count + 1) % refresh_every == 0
      stored = jax.lax.cond(stores, lambda: store(checked=True), keep)
    else:
      # The next step may refresh: every step stores itself, and a static
      # refresh=False step makes no check (a static loop is checked where a
      # refresh follows a refresh).
      stores = True
      stored = store(checked=refresh is not False)
    step, check, tolerance = stored
    return step, jnp.where(stores, state.count, state.stored_at), check, tolerance

  def update_fn(
    updates: optax.Updates,
    state: GeNState,
    params: optax.Params | None = None,
    *,
    value_fn: Callable[[Any], jax.Array] | None = None,
    line: LineMeasurement | None = None,
    refresh: bool | None = None,
    refresh_next: bool | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, GeNState]:
    check_update_call(
      updates,
      state,
      params,
      value_fn=value_fn,
      line=line,
      refresh=refresh,
      refresh_next=refresh_next,
      lookback=lookback,
    )
    check_extra_args(extra_args, inner_takes_extra_args)
    grads = updates
    if value_fn is not None:
      extra_args["value_fn"] = value_fn  # inner line searches take it too
    update, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
    one, no = jnp.ones_like(state.learning_rate), jnp.asarray(False)
    rule, info, burst, spiked = _refresh_or_keep(
      refresh,
      refresh_every,
      state.count,
      lambda: refresh_rule(state, value_fn, line, params, grads, update),
      lambda: (state.rule, state.info, one, no),  # no burst bound, no spike
    )
    step_size = _step_size(rule, state.count, multiplier, total_steps, burst)
    new_updates = jax.tree.map(lambda u: (step_size * u).astype(u.dtype), update)
    if refresh is not False and settings.trust_ratio is not None:
      inner_state, new_updates = _take_back(spiked, state, inner_state, new_updates)
    previous_step, stored_at, check, tolerance = store_step(
      state, params, new_updates, step_size, spiked, refresh, refresh_next
    )
    new_state = GeNState(
      count=optax.safe_increment(state.count),
      rule=rule,
      previous_step=previous_step,
      stored_at=stored_at,
      previous_rate=step_size if lookback else state.previous_rate,
      inner_state=inner_state,
      info=info,
      step_check=check,
      step_check_tolerance=tolerance,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
