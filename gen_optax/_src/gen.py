"""GeN: the generalized-Newton learning rate of any optax optimizer."""

import enum
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import optax

from gen_optax._src import curvature as curvature_lib

Mode = Literal["forward-over-reverse", "forward-over-forward"]
MODES: tuple[str, ...] = get_args(Mode)
SlopeFrom = Literal["value_fn", "gradient"]
SLOPE_SOURCES: tuple[str, ...] = get_args(SlopeFrom)


class Status(enum.IntEnum):
  """Outcome of the last learning-rate refresh, stored in ``GeNInfo.status``.

  Every outcome but ``ACCEPTED`` keeps the previous learning rate.
  """

  ACCEPTED = 0  #: α* was used to update the learning rate.
  INITIAL = 1  #: no refresh has happened yet.
  ZERO_DIRECTION = 2  #: the inner update u is exactly zero.
  NON_FINITE = 3  #: loss, slope, curvature or α* is NaN or infinite.
  NOT_DESCENT = 4  #: slope ≥ 0: u does not go downhill.
  NON_POSITIVE_CURVATURE = 5  #: uᵀHu ≤ 0: the quadratic model has no minimum.


class GeNInfo(NamedTuple):
  """Diagnostics of the last learning-rate refresh (kept between refreshes)."""

  raw_learning_rate: jax.Array  # scalar float, α* = -slope / curvature
  slope: jax.Array  # scalar float, L'(θ)[u]
  curvature: jax.Array  # scalar float, L''(θ)[u, u]
  loss: jax.Array  # scalar float, value_fn(θ)
  status: jax.Array  # scalar int32, a `Status`
  num_refreshes: jax.Array  # scalar int32, refreshes so far
  num_accepted: jax.Array  # scalar int32, accepted refreshes so far

  @property
  def accepted(self) -> jax.Array:
    """Whether the last refresh updated the learning rate (bool scalar)."""
    return self.status == Status.ACCEPTED


class GeNState(NamedTuple):
  """State of :func:`gen`."""

  step: jax.Array  # scalar int32, number of updates so far
  learning_rate: jax.Array  # scalar float (≥ float32), α in units of the inner update
  inner_state: optax.OptState  # state of the wrapped optimizer
  info: GeNInfo  # diagnostics of the last refresh


def _as_number(name: str, value: Any) -> float | None:
  """``float(value)``, or None for a traced value (``inject_hyperparams``)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a real number, got {name}={value!r}.") from None


def _validate(
  inner: Any,
  mode: str,
  slope_from: str,
  init_learning_rate: Any,
  lr_min: Any,
  lr_max: Any,
  smoothing: Any,
  trust_ratio: Any,
  refresh_every: Any,
  multiplier: Any,
  axis_name: Any,
) -> None:
  """Raises ValueError/TypeError naming the first bad argument of `gen`."""
  if not (
    callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))
  ):
    raise TypeError(
      "inner must be an optax.GradientTransformation (e.g. optax.adam(1.0)), "
      f"got inner={inner!r}."
    )
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got mode={mode!r}.")
  if slope_from not in SLOPE_SOURCES:
    raise ValueError(
      f"slope_from must be one of {SLOPE_SOURCES}, got slope_from={slope_from!r}."
    )
  low = _as_number("lr_min", lr_min)
  high = _as_number("lr_max", lr_max)
  init = _as_number("init_learning_rate", init_learning_rate)
  if low is not None and not low > 0:
    raise ValueError(f"lr_min must be > 0, got lr_min={lr_min!r}.")
  if high is not None and not high > 0:
    raise ValueError(f"lr_max must be > 0, got lr_max={lr_max!r}.")
  if low is not None and high is not None and low > high:
    raise ValueError(
      f"lr_min must be <= lr_max, got lr_min={lr_min!r} > lr_max={lr_max!r}."
    )
  if init is not None and not (
    (low is None or init >= low) and (high is None or init <= high)
  ):
    raise ValueError(
      "init_learning_rate must lie in [lr_min, lr_max] = "
      f"[{lr_min!r}, {lr_max!r}], got init_learning_rate={init_learning_rate!r}."
    )
  gamma = _as_number("smoothing", smoothing)
  if gamma is not None and not 0 <= gamma < 1:
    raise ValueError(f"smoothing must lie in [0, 1), got smoothing={smoothing!r}.")
  if trust_ratio is not None:
    rho = _as_number("trust_ratio", trust_ratio)
    if rho is not None and not rho >= 1:
      raise ValueError(
        f"trust_ratio must be >= 1 or None, got trust_ratio={trust_ratio!r}."
      )
  if isinstance(refresh_every, bool) or not isinstance(refresh_every, int):
    raise TypeError(
      f"refresh_every must be an int, got refresh_every={refresh_every!r}."
    )
  if refresh_every < 1:
    raise ValueError(
      f"refresh_every must be >= 1, got refresh_every={refresh_every!r}."
    )
  if multiplier is not None and not callable(multiplier):
    raise TypeError(
      "multiplier must be an optax schedule (a function of the step count) or "
      f"None, got multiplier={multiplier!r}."
    )
  if axis_name is not None and not isinstance(axis_name, str | tuple):
    raise TypeError(
      f"axis_name must be a str, a tuple of str or None, got axis_name={axis_name!r}."
    )


def gen(
  inner: optax.GradientTransformation,
  *,
  mode: Mode = "forward-over-reverse",
  slope_from: SlopeFrom = "value_fn",
  init_learning_rate: float = 1e-3,
  lr_min: float = 1e-6,
  lr_max: float = 1.0,
  smoothing: float = 0.9,
  trust_ratio: float | None = 2.0,
  refresh_every: int = 1,
  multiplier: optax.Schedule | None = None,
  axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales any optax optimizer by the generalized-Newton learning rate.

  With :math:`g` the gradient and :math:`u` the update of ``inner`` (a descent
  direction in optax's convention: parameters move by :math:`+\alpha u`), the
  loss along :math:`u` has the quadratic model

  .. math::
    L(\theta + \alpha u) \approx L(\theta) + \alpha\, L'(\theta)[u]
      + \tfrac12 \alpha^2\, u^\top H u,

  minimised by the generalized Newton step

  .. math::
    \alpha^\star = -\frac{L'(\theta)[u]}{u^\top H u}.

  On a refresh step the learning rate becomes

  .. math::
    \alpha \leftarrow \gamma\,\alpha + (1-\gamma)\,
      \mathrm{clip}\big(\mathrm{clip}(\alpha^\star, \alpha/\rho, \rho\alpha),
      \alpha_{\min}, \alpha_{\max}\big)

  with smoothing :math:`\gamma` and trust ratio :math:`\rho`; the first accepted
  estimate is taken as it is (clamped), since ``init_learning_rate`` is a guess,
  not a measurement.  An estimate is rejected, and :math:`\alpha` kept, when the
  direction is zero, anything is non-finite, the slope is not negative or the
  curvature not positive; :class:`Status` records why.  The returned updates are
  :math:`m(t)\,\alpha\, u`, with :math:`m` the optional ``multiplier`` schedule.

  **Units.** :math:`\alpha^\star u` does not depend on the scale of :math:`u`,
  so the inner optimizer's own learning rate cancels out: build it with
  learning rate ``1.0`` (``gen(optax.adamw(1.0))``) and :math:`\alpha` *is* the
  learning rate.  ``init_learning_rate``, ``lr_min`` and ``lr_max`` are in
  units of the inner update.

  **Where the slope comes from.** ``slope_from="value_fn"`` (default) takes
  :math:`L'(\theta)[u]` from ``value_fn``, the same function whose curvature is
  measured.  When ``value_fn`` closes over a batch independent of the gradient's,
  this removes the upward bias of :math:`\langle g_B, u\rangle`, which contains
  the batch noise squared (for SGD :math:`|G|^2 + |\text{noise}|^2`); measured,
  this is the difference between working and not at small batch sizes.
  ``slope_from="gradient"`` uses :math:`\langle g, u\rangle` of the incoming
  gradient.  On the gradient's own batch the two are equal.

  The inner optimizer is updated exactly once per call; every extra argument
  (``value_fn`` included) is forwarded to it.

  Args:
    inner: the optimizer whose update :math:`u` is scaled, e.g.
      ``optax.adamw(1.0, weight_decay=1e-2)``.
    mode: how :math:`u^\top H u` is computed, exactly: ``"forward-over-reverse"``
      (``jax.jvp`` over ``jax.grad``, a Hessian-vector product; works with
      ``jax.custom_vjp``) or ``"forward-over-forward"`` (``jax.jvp`` of
      ``jax.jvp``; cheaper, no backward activations).  They give the same α.
    slope_from: ``"value_fn"`` or ``"gradient"``, see above.
    init_learning_rate: α until the first accepted estimate.
    lr_min: lower clamp of α, > 0.
    lr_max: upper clamp of α.
    smoothing: :math:`\gamma \in [0, 1)`, weight of the previous α.
    trust_ratio: :math:`\rho \geq 1`, bounds the change of α per refresh to a
      factor of :math:`\rho` before smoothing; ``None`` disables it.
    refresh_every: recompute α every this many steps; steps in between reuse
      it and do no curvature work (``jax.lax.cond``).
    multiplier: optional optax schedule :math:`m(t)` multiplying the step, e.g.
      ``optax.cosine_decay_schedule(1.0, T)`` for a horizon-aware decay.
    axis_name: for per-device code (``shard_map``, ``pmap``): the mapped axis
      name(s) over which slope, curvature and loss are averaged, so replicas
      choose the same α.  Not needed under ``jax.jit`` with sharded arrays.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``(grads, state, params, *, value_fn, **extra_args)``, with
    ``value_fn(params) -> scalar loss``, and whose state is a
    :class:`GeNState`.

  Raises:
    ValueError: for out-of-range or unknown settings, naming the argument.
    TypeError: for arguments of the wrong kind.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gen_optax
    >>> A = jnp.array([[3.0, 0.5], [0.5, 1.0]])
    >>> loss = lambda p: 0.5 * p @ A @ p
    >>> params = jnp.array([1.0, 1.0])
    >>> tx = gen_optax.gen(optax.sgd(1.0), lr_max=10.0)
    >>> state = tx.init(params)
    >>> grads = jax.grad(loss)(params)
    >>> updates, state = tx.update(grads, state, params, value_fn=loss)
    >>> params = optax.apply_updates(params, updates)
    >>> # SGD direction u = -g on a quadratic: α* = gᵀg / gᵀAg (exact line search)
    >>> print(f"{state.learning_rate:.4f} {grads @ grads / (grads @ A @ grads):.4f}")
    0.3277 0.3277

  References:
    Zhiqi Bu and Shiyun Xu, *Gradient descent with generalized Newton's
    method*, ICLR 2025, https://arxiv.org/abs/2407.02772
  """
  _validate(
    inner,
    mode,
    slope_from,
    init_learning_rate,
    lr_min,
    lr_max,
    smoothing,
    trust_ratio,
    refresh_every,
    multiplier,
    axis_name,
  )
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> GeNState:
    dtype = curvature_lib.scalar_dtype(params)
    nan = jnp.full((), jnp.nan, dtype)
    zero = jnp.zeros((), jnp.int32)
    return GeNState(
      step=zero,
      learning_rate=jnp.asarray(init_learning_rate, dtype),
      inner_state=inner.init(params),
      info=GeNInfo(
        raw_learning_rate=nan,
        slope=nan,
        curvature=nan,
        loss=nan,
        status=jnp.asarray(Status.INITIAL, jnp.int32),
        num_refreshes=zero,
        num_accepted=zero,
      ),
    )

  def refresh(
    learning_rate: jax.Array,
    info: GeNInfo,
    value_fn: Callable[[Any], jax.Array],
    params: optax.Params,
    grads: optax.Updates,
    direction: optax.Updates,
  ) -> tuple[jax.Array, GeNInfo]:
    dtype = learning_rate.dtype
    derivs = curvature_lib.line_derivatives(value_fn, params, direction, mode=mode)
    if slope_from == "gradient":
      slope = curvature_lib.tree_vdot(grads, direction, dtype)
    else:
      slope = derivs.slope
    slope, curvature, loss = (
      jnp.asarray(x, dtype) for x in (slope, derivs.curvature, derivs.value)
    )
    if axis_name is not None:
      slope, curvature, loss = jax.lax.pmean((slope, curvature, loss), axis_name)
    raw = -slope / curvature
    status = jnp.select(
      [
        curvature_lib.tree_vdot(direction, direction, dtype) == 0,
        ~(jnp.isfinite(slope) & jnp.isfinite(curvature))
        | ~(jnp.isfinite(loss) & jnp.isfinite(raw)),
        slope >= 0,
        curvature <= 0,
      ],
      [
        Status.ZERO_DIRECTION,
        Status.NON_FINITE,
        Status.NOT_DESCENT,
        Status.NON_POSITIVE_CURVATURE,
      ],
      Status.ACCEPTED,
    ).astype(jnp.int32)
    accepted = status == Status.ACCEPTED
    first = info.num_accepted == 0
    candidate = raw
    if trust_ratio is not None:
      trusted = jnp.clip(raw, learning_rate / trust_ratio, learning_rate * trust_ratio)
      candidate = jnp.where(first, raw, trusted)
    candidate = jnp.clip(candidate, lr_min, lr_max)
    smoothed = smoothing * learning_rate + (1 - smoothing) * candidate
    new_learning_rate = jnp.where(
      accepted, jnp.where(first, candidate, smoothed), learning_rate
    ).astype(dtype)
    new_info = GeNInfo(
      raw_learning_rate=raw,
      slope=slope,
      curvature=curvature,
      loss=loss,
      status=status,
      num_refreshes=optax.safe_increment(info.num_refreshes),
      num_accepted=info.num_accepted + accepted.astype(jnp.int32),
    )
    return new_learning_rate, new_info

  def update_fn(
    updates: optax.Updates,
    state: GeNState,
    params: optax.Params | None = None,
    *,
    value_fn: Callable[[Any], jax.Array] | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, GeNState]:
    if params is None:
      raise ValueError(
        "gen needs the current parameters: call "
        "tx.update(grads, state, params, value_fn=...)."
      )
    if value_fn is None or not callable(value_fn):
      raise TypeError(
        "gen needs the loss as a function of the parameters: call "
        "tx.update(grads, state, params, value_fn=lambda p: loss(p, batch)); "
        f"got value_fn={value_fn!r}."
      )
    grads = updates
    direction, inner_state = inner.update(
      grads, state.inner_state, params, value_fn=value_fn, **extra_args
    )

    def do_refresh() -> tuple[jax.Array, GeNInfo]:
      return refresh(
        state.learning_rate, state.info, value_fn, params, grads, direction
      )

    if refresh_every == 1:
      learning_rate, info = do_refresh()
    else:
      # Only the taken branch runs: steps between refreshes pay no curvature.
      learning_rate, info = jax.lax.cond(
        state.step % refresh_every == 0,
        do_refresh,
        lambda: (state.learning_rate, state.info),
      )
    step_size = learning_rate
    if multiplier is not None:
      step_size = step_size * jnp.asarray(multiplier(state.step), step_size.dtype)
    new_updates = jax.tree.map(lambda u: (step_size * u).astype(u.dtype), direction)
    new_state = GeNState(
      step=optax.safe_increment(state.step),
      learning_rate=learning_rate,
      inner_state=inner_state,
      info=info,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
