"""GeN: the generalized-Newton learning rate of any optax optimizer."""

import enum
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import optax

from gen_optax._src import curvature as curvature_lib
from gen_optax._src import probes as probes_lib

Mode = Literal["forward-over-reverse", "forward-over-forward", "probes", "one-probe"]
MODES: tuple[str, ...] = get_args(Mode)
SlopeFrom = Literal["value_fn", "gradient"]
SLOPE_SOURCES: tuple[str, ...] = get_args(SlopeFrom)


class Status(enum.IntEnum):
  """Outcome of the last learning-rate refresh, stored in ``GeNInfo.status``.

  Every outcome but ``ACCEPTED`` keeps the previous learning rate.  The first
  three and ``POOR_FIT`` discard the measurement; ``NOT_DESCENT`` and
  ``NON_POSITIVE_CURVATURE`` describe the running means, which include it.
  """

  ACCEPTED = 0  #: the means' ratio updated the learning rate.
  INITIAL = 1  #: no refresh has happened yet.
  ZERO_DIRECTION = 2  #: the inner update u is exactly zero.
  NON_FINITE = 3  #: loss, slope or curvature is NaN or infinite.
  NOT_DESCENT = 4  #: mean slope ≥ 0: on average u does not go downhill.
  NON_POSITIVE_CURVATURE = 5  #: mean curvature is zero: no minimum along u.
  POOR_FIT = 6  #: probe fit's R² below ``min_r2`` (more than three points).


class GeNInfo(NamedTuple):
  """Diagnostics of the last learning-rate refresh (kept between refreshes)."""

  raw_learning_rate: jax.Array  # scalar float, α* = -slope / curvature (this batch)
  slope: jax.Array  # scalar float, L'(θ)[u]
  curvature: jax.Array  # scalar float, L''(θ)[u, u] (may be negative)
  loss: jax.Array  # scalar float, value_fn(θ)
  fit_r2: jax.Array  # scalar float, R² of the probe fit (1 for exact modes)
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
  mean_slope: jax.Array  # scalar float, running mean of L'(θ)[u] / ‖u‖
  mean_curvature: jax.Array  # scalar float, running mean of |L''(θ)[u, u]| / ‖u‖²
  inner_state: optax.OptState  # state of the wrapped optimizer
  info: GeNInfo  # diagnostics of the last refresh


# What a refresh changes: (α, mean slope, mean curvature, info).
Refreshed = tuple[jax.Array, jax.Array, jax.Array, GeNInfo]


def _as_number(name: str, value: Any) -> float | None:
  """``float(value)``, or None for a traced value (``inject_hyperparams``)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a real number, got {name}={value!r}.") from None


def _has_masked_nodes(tree: Any) -> bool:
  """Whether `tree` comes from inside `optax.masked`/`optax.partition`."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  return any(map(is_masked, jax.tree.leaves(tree, is_leaf=is_masked)))


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


def _validate(
  *,
  inner: Any,
  mode: Any,
  slope_from: Any,
  init_learning_rate: Any,
  lr_min: Any,
  lr_max: Any,
  smoothing: Any,
  trust_ratio: Any,
  warmup_growth: Any,
  max_growth: Any,
  refresh_every: Any,
  multiplier: Any,
  probe_multipliers: Any,
  min_r2: Any,
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
  if warmup_growth is not None:
    growth = _as_number("warmup_growth", warmup_growth)
    if growth is not None and not growth > 1:
      raise ValueError(
        f"warmup_growth must be > 1 or None, got warmup_growth={warmup_growth!r}."
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
  if multiplier is not None and not callable(multiplier):
    raise TypeError(
      "multiplier must be an optax schedule (a function of the step count) or "
      f"None, got multiplier={multiplier!r}."
    )
  try:
    nonzero = {_as_number("probe_multipliers", m) for m in probe_multipliers} - {0.0}
  except TypeError:
    raise TypeError(
      "probe_multipliers must be a sequence of numbers, "
      f"got probe_multipliers={probe_multipliers!r}."
    ) from None
  if len(nonzero) < 2:
    raise ValueError(
      "probe_multipliers need at least two distinct non-zero values, "
      f"got probe_multipliers={probe_multipliers!r}."
    )
  if min_r2 is not None:
    r2 = _as_number("min_r2", min_r2)
    if r2 is not None and not r2 <= 1:
      raise ValueError(f"min_r2 must be <= 1 or None, got min_r2={min_r2!r}.")
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
  smoothing: float = 0.98,
  trust_ratio: float | None = 2.0,
  warmup_growth: float | None = 1.2,
  max_growth: float | None = 1.02,
  refresh_every: int = 1,
  multiplier: optax.Schedule | None = None,
  probe_multipliers: Sequence[float] = (-1.0, 0.0, 1.0),
  min_r2: float | None = 0.99,
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

  One measurement is noisy when ``value_fn`` sees a small batch, so on a
  refresh step :math:`\alpha` comes from running means of the slope and the
  curvature per unit length of :math:`u`, with :math:`s = L'(\theta)[u]` and
  :math:`c = u^\top H u` measured by ``value_fn``:

  .. math::
    \bar s \leftarrow \gamma \bar s + (1-\gamma)\,\frac{s}{\|u\|}, \qquad
    \bar c \leftarrow \gamma \bar c + (1-\gamma)\,\frac{|c|}{\|u\|^2}, \qquad
    \hat\alpha = -\frac{\bar s}{\bar c\, \|u\|},

  .. math::
    \alpha \leftarrow \mathrm{clip}\Big(\min\big(
      \mathrm{clip}(\hat\alpha, \alpha/\rho, \rho\alpha),\; b\big),
      \alpha_{\min}, \alpha_{\max}\Big), \qquad
    b = \begin{cases}
      \alpha_0\, g^{\,n+1} & \text{while } \alpha = \alpha_0\, g^{\,n}
        \text{ (warm-up)}, \\
      r\, \alpha & \text{afterwards},
    \end{cases}

  with smoothing :math:`\gamma`, trust ratio :math:`\rho`, :math:`n` the
  number of accepted estimates so far, :math:`\alpha_0` =
  ``init_learning_rate``, :math:`g` = ``warmup_growth`` and :math:`r` =
  ``max_growth`` (neither :math:`\rho` nor :math:`r` bounds the first accepted
  estimate).
  Both means start at zero with the same weights, so their ratio needs no bias
  correction; with :math:`\gamma = 0`, :math:`\hat\alpha = \alpha^\star` (for
  :math:`c > 0`).  A measurement is discarded when the direction is zero,
  anything is non-finite or a probe fit poor; :math:`\alpha` is kept then, and
  when :math:`\bar s \ge 0`; :class:`Status` records why.  The returned updates
  are :math:`m(t)\,\alpha\, u`, with :math:`m` the optional ``multiplier``.

  **Why this rule** (each part measured on four problems of the selection half
  of ``benchmarks/quality.py``, see ``docs/method.md``):

  * *Ratio of means.*  The fresh-batch slope and curvature are unbiased, their
    ratio is not: a batch with little curvature gives a huge :math:`\alpha^\star`.
    :math:`\bar s / \bar c` estimates the minimiser of the *expected* quadratic
    model, and uphill measurements (:math:`s \ge 0`) simply enter the mean.
  * *Per unit length.*  The means do not depend on :math:`\|u\|`, so when a
    momentum buffer's norm grows tenfold in its first steps, :math:`\alpha`
    falls at once instead of diverging.
  * :math:`|c|`: a concave direction is measured by the magnitude of its
    curvature, as in saddle-free Newton (Dauphin et al., 2014), so
    :math:`\bar c` cannot cross zero on non-convex losses.
  * *Warm-up.*  Early in training the greedy :math:`\alpha^\star` is larger than
    what is best over many steps (a character transformer trained with it
    stalls at 2.7 nats against 1.5 for tuned AdamW); the cap
    :math:`\alpha_0 g^n` makes it a geometric warm-up from ``init_learning_rate``
    that ends when an estimate falls below the cap (at the latest when the
    cap passes ``lr_max``, 38 refreshes from 1e-3 at :math:`g = 1.2`).
  * *Slow growth afterwards.*  Near interpolation the greedy step keeps its
    length while Adam's update shrinks, so :math:`\alpha^\star` climbs (on a
    digits CNN from 0.02 to 0.4 in 200 steps, against a best constant rate of
    0.01) until single batches make the loss spike.  After the warm-up
    :math:`\alpha` may fall by :math:`\rho` per refresh but grow only by
    :math:`r`.

  **Units.** :math:`\alpha^\star u` does not depend on the scale of :math:`u`,
  so the inner optimizer's own learning rate cancels out: build it with
  learning rate ``1.0`` (``gen(optax.adamw(1.0))``) and :math:`\alpha` *is* the
  learning rate.  ``init_learning_rate``, ``lr_min`` and ``lr_max`` are in
  units of the inner update.

  **Modes.** How the quadratic model along :math:`u` is obtained:

  * ``"forward-over-reverse"`` (default): exact, ``jax.jvp`` over ``jax.grad``
    (a Hessian-vector product); differentiates ``jax.custom_vjp`` too.
  * ``"forward-over-forward"``: exact, ``jax.jvp`` of ``jax.jvp``; cheaper and
    stores no backward activations, but needs forward-mode rules everywhere.
  * ``"probes"``: forward-only, the paper's fit of losses at
    :math:`\theta + s_i h u` for ``probe_multipliers`` :math:`s_i` with
    :math:`h = \alpha` (:func:`line_probes`); more than three points activate
    the :math:`R^2 \geq` ``min_r2`` gate.
  * ``"one-probe"``: the exact slope and one probe at :math:`+h`,
    :math:`c = 2(L(\theta+hu) - L(\theta) - h\,L'(\theta)[u])/h^2`
    (:func:`one_probe_curvature`).

  **Where the slope comes from.** ``slope_from="value_fn"`` (default) takes
  :math:`L'(\theta)[u]` from ``value_fn``, the same function whose curvature is
  measured.  When ``value_fn`` closes over a batch independent of the gradient's,
  this removes the upward bias of :math:`\langle g_B, u\rangle`, which contains
  the batch noise squared (for SGD :math:`|G|^2 + |\text{noise}|^2`); on a digits
  MLP at batch 64 it gave a 6x lower final loss than the gradient's own batch
  (``benchmarks/slope_source.py``).  ``slope_from="gradient"`` uses
  :math:`\langle g, u\rangle` of the incoming gradient.  On the gradient's own
  batch the two are equal.

  The inner optimizer is updated exactly once per call; every extra argument
  (``value_fn`` included) is forwarded to it.

  Args:
    inner: the optimizer whose update :math:`u` is scaled, e.g.
      ``optax.adamw(1.0, weight_decay=1e-2)``.
    mode: ``"forward-over-reverse"``, ``"forward-over-forward"``, ``"probes"``
      or ``"one-probe"``, see above.
    slope_from: ``"value_fn"`` or ``"gradient"``, see above.
    init_learning_rate: α until the first accepted estimate, and the start of
      the warm-up cap.
    lr_min: lower clamp of α, > 0.
    lr_max: upper clamp of α.
    smoothing: :math:`\gamma \in [0, 1)`, weight of the past in the running
      means of slope and curvature.
    trust_ratio: :math:`\rho \geq 1`, bounds the change of α per refresh to a
      factor of :math:`\rho`; ``None`` disables it.
    warmup_growth: :math:`g > 1`, growth per refresh of the warm-up cap
      :math:`\alpha_0 g^n`; ``None`` disables the warm-up.  Keep it below
      ``trust_ratio``, which would otherwise end the warm-up at once.
    max_growth: :math:`r \geq 1`, the most α may grow per refresh after the
      warm-up; ``None`` leaves only ``trust_ratio`` to bound it.
    refresh_every: recompute α every this many steps; steps in between reuse
      it and do no curvature work (``jax.lax.cond``).
    multiplier: optional optax schedule :math:`m(t)` multiplying the step, e.g.
      ``optax.cosine_decay_schedule(1.0, T)`` for a horizon-aware decay.
    probe_multipliers: the :math:`s_i` of ``mode="probes"``.
    min_r2: the least :math:`R^2` a probe fit of more than three points must
      reach to be accepted (gen-optim uses 0.99); ``None`` disables the gate.
    axis_name: for per-device code (``shard_map``, ``pmap``): the mapped axis
      name(s) over which slope, curvature and loss are averaged, so replicas
      choose the same α.  Not needed under ``jax.jit`` with sharded arrays.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``(grads, state, params, *, value_fn, value=None, refresh=None,
    **extra_args)``, with ``value_fn(params) -> scalar loss``; optionally
    ``value``, the known ``value_fn(params)``, which saves the probe modes a
    forward pass; and optionally ``refresh``, a static Python bool that
    overrides ``refresh_every`` for this call.  Its state is a
    :class:`GeNState`.

    ``refresh`` exists for XLA:CPU, where a convolution's backward pass inside
    ``jax.lax.cond`` runs up to 8x slower (jax-ml/jax#12868): compile the train
    step twice with ``refresh`` static (``refresh=step % k == 0``) and neither
    variant contains a ``cond``.

  Raises:
    ValueError: for out-of-range or unknown settings, naming the argument.
    TypeError: for arguments of the wrong kind.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gen_optax
    >>> A = jnp.array([[3.0, 0.5], [0.5, 1.0]])
    >>> loss = lambda p: 0.5 * p @ A @ p
    >>> params = jnp.array([1.0, 1.0])
    >>> tx = gen_optax.gen(optax.sgd(1.0), warmup_growth=None, lr_max=10.0)
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
    inner=inner,
    mode=mode,
    slope_from=slope_from,
    init_learning_rate=init_learning_rate,
    lr_min=lr_min,
    lr_max=lr_max,
    smoothing=smoothing,
    trust_ratio=trust_ratio,
    warmup_growth=warmup_growth,
    max_growth=max_growth,
    refresh_every=refresh_every,
    multiplier=multiplier,
    probe_multipliers=probe_multipliers,
    min_r2=min_r2,
    axis_name=axis_name,
  )
  inner = optax.with_extra_args_support(inner)
  gate_fit = mode == "probes" and min_r2 is not None and len(probe_multipliers) > 3

  def init_fn(params: optax.Params) -> GeNState:
    dtype = curvature_lib.scalar_dtype(params)
    # A fresh buffer per field: a state with shared buffers cannot be donated.
    nan = lambda: jnp.full((), jnp.nan, dtype)  # noqa: E731
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
    return GeNState(
      step=zero(),
      learning_rate=jnp.asarray(init_learning_rate, dtype),
      mean_slope=jnp.zeros((), dtype),
      mean_curvature=jnp.zeros((), dtype),
      inner_state=inner.init(params),
      info=GeNInfo(
        raw_learning_rate=nan(),
        slope=nan(),
        curvature=nan(),
        loss=nan(),
        fit_r2=nan(),
        status=jnp.asarray(Status.INITIAL, jnp.int32),
        num_refreshes=zero(),
        num_accepted=zero(),
      ),
    )

  def quadratic_model(
    value_fn: Callable[[Any], jax.Array],
    params: optax.Params,
    direction: optax.Updates,
    step_size: jax.Array,
    value: jax.Array | None,
    gradient_slope: jax.Array | None,
  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(loss, slope, curvature, fit R²) of the loss along the direction.

    ``gradient_slope`` is ⟨g, u⟩ when ``slope_from="gradient"``, else None.
    """
    one = jnp.ones((), step_size.dtype)
    if mode == "probes":
      loss, slope, curvature, fit_r2 = probes_lib.line_probes(
        value_fn,
        params,
        direction,
        step_size,
        multipliers=probe_multipliers,
        value=value,
      )
    elif mode == "one-probe":
      if gradient_slope is None:
        loss, slope = curvature_lib.value_and_slope(value_fn, params, direction)
      else:
        loss = value_fn(params) if value is None else jnp.asarray(value)
        slope = gradient_slope
      curvature = probes_lib.one_probe_curvature(
        value_fn, params, direction, step_size, loss, slope
      )
      fit_r2 = one
    else:
      loss, slope, curvature = curvature_lib.line_derivatives(
        value_fn, params, direction, mode=mode
      )
      fit_r2 = one
    if gradient_slope is not None:
      slope = gradient_slope
    return loss, slope, curvature, fit_r2

  def bounds(
    learning_rate: jax.Array, num_accepted: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """(lower, upper) bound on the next α, before the clamp to [lr_min, lr_max].

    The trust ratio bounds both ways; the upper bound is also the warm-up cap
    while α climbs it, then max_growth.  The first accepted estimate is bound
    by the warm-up cap alone: init_learning_rate is a guess, not a measurement.
    """
    dtype = learning_rate.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    first = num_accepted == 0
    lower, upper = -inf, inf
    if trust_ratio is not None:
      lower = jnp.where(first, -inf, learning_rate / trust_ratio)
      upper = jnp.where(first, inf, learning_rate * trust_ratio)
    climbing, warmup_cap = jnp.asarray(False), inf
    if warmup_growth is not None:
      growth = jnp.asarray(warmup_growth, dtype)
      previous_cap = init_learning_rate * growth ** num_accepted.astype(dtype)
      warmup_cap = previous_cap * growth
      # The warm-up starts with the first estimate and lasts while α sits on
      # the cap (up to rounding of the power); once an estimate falls below
      # it, α is past its warm-up.
      climbing = first | (learning_rate >= previous_cap * (1 - 1e-4))
    after = inf
    if max_growth is not None:
      after = jnp.where(first, inf, learning_rate * max_growth)
    return lower, jnp.minimum(upper, jnp.where(climbing, warmup_cap, after))

  def next_learning_rate(
    state: GeNState,
    value_fn: Callable[[Any], jax.Array],
    value: jax.Array | None,
    params: optax.Params,
    grads: optax.Updates,
    direction: optax.Updates,
  ) -> Refreshed:
    """Measures the loss along u; returns the new α, means and info."""
    learning_rate, info = state.learning_rate, state.info
    dtype = learning_rate.dtype
    if axis_name is not None:
      # Under shard_map the data vary across devices while params and u are
      # replicated; jvp of grad then mixes the two (jax's check_vma refuses).
      params, direction = _varying((params, direction), axis_name)
    model = quadratic_model(
      value_fn,
      params,
      direction,
      learning_rate,
      value,
      curvature_lib.tree_vdot(grads, direction, dtype)
      if slope_from == "gradient"
      else None,
    )
    loss, slope, curvature, fit_r2 = (jnp.asarray(x, dtype) for x in model)
    if axis_name is not None:
      loss, slope, curvature = jax.lax.pmean((loss, slope, curvature), axis_name)
    norm = jnp.sqrt(curvature_lib.tree_vdot(direction, direction, dtype))
    poor_fit = jnp.asarray(False)
    if gate_fit and min_r2 is not None:
      poor_fit = ~(fit_r2 >= min_r2)  # NaN R² fails too
    discard = jnp.select(
      [
        norm == 0,
        ~(jnp.isfinite(loss) & jnp.isfinite(slope) & jnp.isfinite(curvature)),
        poor_fit,
      ],
      [Status.ZERO_DIRECTION, Status.NON_FINITE, Status.POOR_FIT],
      Status.ACCEPTED,
    )
    measured = discard == Status.ACCEPTED
    # Per unit length of u, so that the means do not depend on its norm (a
    # momentum buffer's norm grows ~10x in its first steps); |c|: a concave
    # direction is measured by its magnitude (as saddle-free Newton does).
    # A discarded measurement leaves the means as they are.
    safe_norm = jnp.where(measured, norm, 1)
    mean = lambda old, new: jnp.where(  # noqa: E731
      measured, smoothing * old + (1 - smoothing) * new, old
    )
    mean_slope = mean(state.mean_slope, slope / safe_norm)
    mean_curvature = mean(state.mean_curvature, jnp.abs(curvature) / safe_norm**2)
    status = jnp.select(
      [~measured, mean_slope >= 0, mean_curvature <= 0],
      [discard, Status.NOT_DESCENT, Status.NON_POSITIVE_CURVATURE],
      Status.ACCEPTED,
    ).astype(jnp.int32)
    accepted = status == Status.ACCEPTED
    # Both means start at zero with the same weights: their ratio needs no
    # bias correction, and the first one is the batch's own α*.
    estimate = -mean_slope / jnp.where(accepted, mean_curvature * safe_norm, 1)
    lower, upper = bounds(learning_rate, info.num_accepted)
    # The upper bound wins when the two cross (a warm-up cap under α/ρ).
    estimate = jnp.minimum(jnp.maximum(estimate, lower), upper)
    estimate = jnp.clip(estimate, lr_min, lr_max)
    new_info = GeNInfo(
      raw_learning_rate=-slope / curvature,
      slope=slope,
      curvature=curvature,
      loss=loss,
      fit_r2=fit_r2,
      status=status,
      num_refreshes=optax.safe_increment(info.num_refreshes),
      num_accepted=info.num_accepted + accepted.astype(jnp.int32),
    )
    new_learning_rate = jnp.where(accepted, estimate, learning_rate).astype(dtype)
    return new_learning_rate, mean_slope, mean_curvature, new_info

  def update_fn(
    updates: optax.Updates,
    state: GeNState,
    params: optax.Params | None = None,
    *,
    value_fn: Callable[[Any], jax.Array] | None = None,
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
        "tx.update(grads, state, params, value_fn=...)."
      )
    if value_fn is None or not callable(value_fn):
      raise TypeError(
        "gen needs the loss as a function of the parameters: call "
        "tx.update(grads, state, params, value_fn=lambda p: loss(p, batch)); "
        f"got value_fn={value_fn!r}."
      )
    if _has_masked_nodes(params):
      raise ValueError(
        "gen received params with optax.MaskedNode leaves: it sits inside "
        "optax.masked or optax.partition, where value_fn would see only part of "
        "the parameters. Put gen outside and the masking inside: "
        "gen(optax.partition({...}, labels)) or gen(optax.masked(inner, mask))."
      )
    grads = updates
    direction, inner_state = inner.update(
      grads, state.inner_state, params, value_fn=value_fn, **extra_args
    )

    def do_refresh() -> Refreshed:
      return next_learning_rate(
        state, value_fn, extra_args.get("value"), params, grads, direction
      )

    def keep() -> Refreshed:
      return state.learning_rate, state.mean_slope, state.mean_curvature, state.info

    if refresh is not None:
      refreshed = do_refresh() if refresh else keep()
    elif refresh_every == 1:
      refreshed = do_refresh()
    else:
      # Only the taken branch runs: steps between refreshes pay no curvature.
      refreshed = jax.lax.cond(state.step % refresh_every == 0, do_refresh, keep)
    learning_rate, mean_slope, mean_curvature, info = refreshed
    step_size = learning_rate
    if multiplier is not None:
      step_size = step_size * jnp.asarray(multiplier(state.step), step_size.dtype)
    new_updates = jax.tree.map(lambda u: (step_size * u).astype(u.dtype), direction)
    new_state = GeNState(
      step=optax.safe_increment(state.step),
      learning_rate=learning_rate,
      mean_slope=mean_slope,
      mean_curvature=mean_curvature,
      inner_state=inner_state,
      info=info,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
