"""The loss along a line: value, slope and curvature, by any of GeN's modes.

Along the line t ↦ L(θ + t·d) the loss has the Taylor expansion

    L(θ + t·d) = L(θ) + t·L'(θ)[d] + ½t²·L''(θ)[d, d] + O(t³),

and GeN needs the two coefficients ``slope = L'(θ)[d] = ⟨∇L(θ), d⟩`` and
``curvature = L''(θ)[d, d] = dᵀ∇²L(θ)d``.  One registry, :data:`MODES`, maps
each way of obtaining them to its function; every one returns a
:class:`LineMeasurement`, alone (:func:`measure_line`) or fused with the
gradient of the same loss (:func:`value_grad_and_line`).
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gen_optax._src.checks import check_like, check_range, scalar_loss

Mode = Literal[
  "auto", "forward-over-reverse", "forward-over-forward", "probes", "one-probe"
]


class Probes(NamedTuple):
  r"""``mode="probes"`` with its settings (``mode="probes"`` is ``Probes()``).

  The least-squares quadratic fit of the losses at
  :math:`\theta + s_i h d` (the paper's Algorithm 1, forward passes only).

  Example:
    >>> import jax.numpy as jnp
    >>> import gen_optax
    >>> q = lambda p: jnp.sum((p - 1.0) ** 2)  # a quadratic: an exact fit
    >>> mode = gen_optax.Probes(multipliers=(-2.0, -1.0, 1.0, 2.0))
    >>> m = gen_optax.measure_line(q, jnp.zeros(2), jnp.ones(2), mode=mode,
    ...                            step_size=0.1)
    >>> [round(float(v), 4) for v in m]
    [2.0, -4.0, 4.0, 1.0]
  """

  #: the :math:`s_i`, in units of the probe step :math:`h d`: at least two
  #: distinct non-zero values; zeros cost nothing (the known point)
  multipliers: Sequence[float] = (-1.0, 0.0, 1.0)
  #: the least :math:`R^2` a fit of more than three points must reach, or
  #: :func:`gen` discards it (``Status.POOR_FIT``); ``None``: no gate
  min_r2: float | None = 0.99


class LineMeasurement(NamedTuple):
  r"""The loss along a direction :math:`d` at :math:`\theta`, at ``t = 0``."""

  loss: jax.Array  #: scalar float (≥ float32), L(θ)
  slope: jax.Array  #: scalar float, L'(θ)[d] = ⟨∇L(θ), d⟩ (fitted by probes)
  curvature: jax.Array  #: scalar float, L''(θ)[d, d] = dᵀ H d (fitted by probes)
  fit_r2: jax.Array  #: scalar float, R² of the probe fit; 1 for exact modes


class _Measure(Protocol):
  def __call__(
    self,
    value_fn: Callable[[Any], jax.Array],
    params: Any,
    direction: Any,
    *,
    step_size: jax.Array,
    probe_multipliers: Sequence[float],
    loss: jax.Array | None,
    gradient: Any,
  ) -> LineMeasurement: ...


def scalar_dtype(tree: Any) -> jnp.dtype:
  """The dtype for scalars derived from ``tree``: at least float32.

  Low-precision parameters (bfloat16, float16) still get float32 dot products
  and learning rates; float64 parameters keep float64.
  """
  dtypes = [jnp.asarray(x).dtype for x in jax.tree.leaves(tree)]
  return jnp.result_type(jnp.float32, *dtypes)


def tree_vdot(x: Any, y: Any, dtype: jnp.dtype) -> jax.Array:
  """⟨x, y⟩ = Σ_leaves Σ_i x_i y_i of real trees, accumulated in ``dtype``.

  Never in bfloat16 (``dtype`` is at least float32).  An elementwise product
  and a sum rather than ``jnp.vdot``: with explicitly sharded leaves (FSDP:
  a parameter split over devices) a dot product over the sharded axis has no
  defined output sharding and raises, while a sum reduces to a replicated
  scalar.
  """
  products = jax.tree.map(lambda a, b: jnp.sum(a.astype(dtype) * b.astype(dtype)), x, y)
  return jnp.asarray(sum(jax.tree.leaves(products), jnp.zeros((), dtype)), dtype)


def cast_like(tree: Any, like: Any) -> Any:
  """``tree`` with the dtypes of ``like`` (tangents must match primals)."""
  return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def _result(loss: Any, slope: Any, curvature: Any, fit_r2: Any = 1) -> LineMeasurement:
  """A :class:`LineMeasurement` of scalars in the loss's dtype, ≥ float32."""
  dtype = scalar_dtype(loss)
  return LineMeasurement(
    *(jnp.asarray(x, dtype) for x in (loss, slope, curvature, fit_r2))
  )


def _forward_rule_missing(error: BaseException) -> bool:
  """Whether ``error`` is JAX's for an operation without a forward-mode rule.

  These are the errors JAX raises, at trace time, for ``jax.jvp`` of a
  ``jax.custom_vjp`` function (``custom_lin`` once linearised; a TypeError in
  older releases), of a primitive without a JVP rule, and of a
  ``jax.pure_callback``; an error of the user's own code is none of them.
  """
  message = str(error)
  if isinstance(error, NotImplementedError):
    return message.startswith("Differentiation rule for ")
  if isinstance(error, TypeError):
    return "forward-mode autodiff (jvp) to a custom_vjp" in message
  if isinstance(error, ValueError):
    return "callbacks do not support JVP" in message
  return False


@contextlib.contextmanager
def _forward_mode_errors(mode: str) -> Iterator[None]:
  """Re-raises a missing forward-mode rule with the settings that avoid it."""
  try:
    yield
  except (TypeError, NotImplementedError, ValueError) as error:
    if not _forward_rule_missing(error):
      raise
    raise type(error)(
      f"mode={mode!r} needs the forward-mode derivative of every operation in "
      "value_fn, and one has none (a jax.custom_vjp function?). Use "
      "mode='auto' or mode='forward-over-reverse' (exact, differentiates "
      "custom_vjp) or a probe mode: mode='probes', or mode='one-probe' with "
      "slope_from='gradient' (or the fused gen_optax.value_and_grad), which only "
      f"evaluate value_fn. Original error: {error}"
    ) from error


def _reverse(fun_with_aux, params, direction):
  """``jax.jvp`` of ``jax.value_and_grad``: L, ∇L, aux and the line, one pass.

  Returns ``(loss, aux, grads, measurement)``; ``fun_with_aux`` returns
  ``(loss, aux)``.
  """

  def loss_and_grad(p: Any) -> tuple[tuple[jax.Array, Any], Any]:
    (loss, aux), grads = jax.value_and_grad(fun_with_aux, has_aux=True)(p)
    return (loss, grads), aux

  (loss, grads), (slope, hvp), aux = jax.jvp(
    loss_and_grad, (params,), (direction,), has_aux=True
  )
  curvature = tree_vdot(direction, hvp, scalar_dtype(hvp))
  return loss, aux, grads, _result(loss, slope, curvature)


def _forward_over_reverse(value_fn, params, direction, **_):
  """∇L and H·d in one pass; then dᵀHd = ⟨d, Hd⟩."""
  return _reverse(lambda p: (value_fn(p), None), params, direction)[3]


def _second_order_jvp(value_fn, params, direction):
  """``((f(0), f'(0)), (f'(0), f''(0)))`` by ``jax.jvp`` of ``jax.jvp``."""

  def value_and_slope(p):
    return jax.jvp(value_fn, (p,), (direction,))

  return jax.jvp(value_and_slope, (params,), (direction,))


def _forward_over_forward(value_fn, params, direction, *, loss, gradient, **_):
  """``jax.jvp`` of ``jax.jvp``: f'(0) and f''(0) directly, no backward pass."""
  del loss, gradient  # the same forward pass; XLA shares it with the gradient's
  with _forward_mode_errors("forward-over-forward"):
    (loss, slope), (_, curvature) = _second_order_jvp(value_fn, params, direction)
  return _result(loss, slope, curvature)


def _primitive_names(jaxpr: Any) -> Iterator[str]:
  """Names of the primitives of a (closed) jaxpr, its sub-jaxprs included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
          yield from _primitive_names(sub)


def _exact_mode(value_fn, params, direction) -> Mode:
  """The exact mode of ``"auto"``: forward-over-forward if it can run, else reverse.

  Traces the second-order JVP to a jaxpr (trace time only, no effect on the
  compiled step) and falls back on JAX's own errors for an operation without
  a forward-mode rule (any other error is the user's and is raised), or when
  the trace kept a ``custom_lin``: the linearised ``jax.custom_vjp`` that
  forward mode cannot differentiate, which JAX only reports when lowering.
  """
  try:
    jaxpr = jax.make_jaxpr(lambda p, d: _second_order_jvp(value_fn, p, d))(
      params, direction
    )
  except (TypeError, NotImplementedError, ValueError) as error:
    if not _forward_rule_missing(error):
      raise
    return "forward-over-reverse"
  if "custom_lin" in _primitive_names(jaxpr):
    return "forward-over-reverse"
  return "forward-over-forward"


def auto_mode(value_fn: Callable[[Any], jax.Array], params: Any) -> Mode:
  """The exact mode that ``mode="auto"`` (the default) measures ``value_fn`` with.

  ``"forward-over-forward"`` (``jax.jvp`` of ``jax.jvp``: no backward pass,
  no stored activations) when every operation of ``value_fn`` has a
  forward-mode rule, ``"forward-over-reverse"`` (``jax.jvp`` of
  ``jax.grad``, which differentiates ``jax.custom_vjp``) otherwise.  The
  choice is made at trace time from an abstract trace and costs nothing in
  the compiled step; the fallback is selected only by JAX's own error for a
  missing forward-mode rule, or by a linearised ``jax.custom_vjp``
  (``custom_lin``) left in that trace, which JAX refuses only when lowering.

  Args:
    value_fn: the loss, ``value_fn(params) -> scalar``.
    params: a pytree of float arrays (only shapes and dtypes are read).

  Returns:
    ``"forward-over-forward"`` or ``"forward-over-reverse"``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import gen_optax
    >>> gen_optax.auto_mode(lambda p: jnp.sum(jnp.tanh(p) ** 2), jnp.ones(3))
    'forward-over-forward'
    >>> @jax.custom_vjp
    ... def clip_gradient(x):
    ...   return x
    >>> clip_gradient.defvjp(lambda x: (x, None),
    ...                      lambda _, g: (jnp.clip(g, -1.0, 1.0),))
    >>> gen_optax.auto_mode(lambda p: jnp.sum(clip_gradient(p) ** 2), jnp.ones(3))
    'forward-over-reverse'
  """
  return _exact_mode(scalar_loss(value_fn, "value_fn"), params, params)


def _auto(value_fn, params, direction, **kwargs):
  """The cheaper exact mode that ``value_fn`` allows (see :func:`_exact_mode`)."""
  mode = _exact_mode(value_fn, params, direction)
  return MODES[mode](value_fn, params, direction, **kwargs)


def _shift(params: Any, direction: Any, t: jax.Array) -> Any:
  """θ + t·d, in the dtypes of θ."""
  return jax.tree.map(
    lambda p, u: p + t.astype(p.dtype) * u.astype(p.dtype), params, direction
  )


def probe_losses(
  value_fn: Callable[[Any], jax.Array], params: Any, direction: Any, steps: jax.Array
) -> jax.Array:
  """``[value_fn(θ + t·d) for t in steps]``, one forward pass after the other.

  ``jax.lax.map`` runs the probes sequentially: one forward pass's memory at a
  time (vmapped probes measured up to 5x slower on a CNN on CPU), and nothing
  is differentiated, so no activations are kept.
  """
  return jax.lax.map(lambda t: value_fn(_shift(params, direction, t)), steps)


def _loss_at(value_fn, params, loss) -> jax.Array:
  """L(θ) in at least float32 (a float16 loss would underflow h²)."""
  loss = value_fn(params) if loss is None else loss
  return jnp.asarray(loss, scalar_dtype(loss))


def _probes(
  value_fn, params, direction, *, step_size, probe_multipliers, loss, gradient
):
  r"""Least-squares quadratic through probes at :math:`s_i h` (Algorithm 1)."""
  del gradient  # the fit needs losses only
  s_all = np.asarray(probe_multipliers, np.float64)
  nonzero = s_all[s_all != 0]
  loss = _loss_at(value_fn, params, loss)
  dtype = loss.dtype
  h = jnp.asarray(step_size, dtype)
  s = jnp.asarray(nonzero, dtype)
  y = probe_losses(value_fn, params, direction, s * h).astype(dtype) - loss
  # Normal equations of y ≈ β1·s + β2·s²/2 in the unitless s, which keeps
  # them well conditioned for tiny h (points at s = 0 add nothing).
  s11, s12, s22 = jnp.sum(s**2), jnp.sum(s**3) / 2, jnp.sum(s**4) / 4
  r1, r2 = jnp.sum(s * y), jnp.sum(s**2 * y) / 2
  det = s11 * s22 - s12**2
  beta1 = (s22 * r1 - s12 * r2) / det
  beta2 = (s11 * r2 - s12 * r1) / det
  # R² over all points, the known y = 0 at s = 0 included.
  y_all = jnp.zeros(s_all.shape, dtype).at[np.flatnonzero(s_all)].set(y)
  fitted = beta1 * s_all.astype(dtype) + beta2 * s_all.astype(dtype) ** 2 / 2
  total = jnp.sum((y_all - jnp.mean(y_all)) ** 2)
  fit_r2 = jnp.where(total > 0, 1 - jnp.sum((y_all - fitted) ** 2) / total, jnp.nan)
  return _result(loss, beta1 / h, beta2 / h**2, fit_r2)


def _one_probe(value_fn, params, direction, *, step_size, loss, gradient, **_):
  r"""Exact slope, curvature :math:`2(L(\theta+hd) - L - h L')/h^2`."""
  if gradient is None:
    with _forward_mode_errors("one-probe"):
      loss, slope = jax.jvp(value_fn, (params,), (direction,))
  loss = _loss_at(value_fn, params, loss)
  dtype = loss.dtype
  if gradient is not None:
    slope = tree_vdot(gradient, direction, dtype)
  h, slope = jnp.asarray(step_size, dtype), jnp.asarray(slope, dtype)
  probe = probe_losses(value_fn, params, direction, h[None])[0].astype(dtype)
  return _result(loss, slope, 2 * (probe - loss - h * slope) / h**2)


MODES: dict[str, _Measure] = {
  "auto": _auto,
  "forward-over-reverse": _forward_over_reverse,
  "forward-over-forward": _forward_over_forward,
  "probes": _probes,
  "one-probe": _one_probe,
}


def resolve_mode(mode: Any) -> tuple[str, Probes]:
  """The name of ``mode`` and its probe settings; raises for a bad one.

  Raises ValueError/TypeError naming a bad mode, probe set or R² gate.
  """
  if isinstance(mode, Probes):
    name, probes = "probes", mode
  elif isinstance(mode, str) and mode in MODES:
    name, probes = mode, Probes()
  else:
    raise ValueError(
      f"mode must be one of {tuple(MODES)} or a gen_optax.Probes, got mode={mode!r}."
    )
  multipliers = probes.multipliers
  try:
    values = [float(m) for m in multipliers]
  except (TypeError, ValueError):
    raise TypeError(
      "Probes.multipliers must be a sequence of numbers, "
      f"got multipliers={multipliers!r}."
    ) from None
  if len(set(values) - {0.0}) < 2:
    raise ValueError(
      "Probes.multipliers need at least two distinct non-zero values, "
      f"got multipliers={multipliers!r}."
    )
  check_range("min_r2", probes.min_r2, lambda r2: r2 <= 1, "be <= 1 or None")
  return name, probes


def measure_line(
  value_fn: Callable[[Any], jax.Array],
  params: Any,
  direction: Any,
  *,
  mode: Mode | Probes = "auto",
  step_size: jax.typing.ArrayLike = 1.0,
  loss: jax.typing.ArrayLike | None = None,
  gradient: Any = None,
) -> LineMeasurement:
  r"""Value, slope and curvature of ``value_fn`` along ``direction``.

  With :math:`f(t) = L(\theta + t d)` this returns :math:`f(0) = L(\theta)`,
  :math:`f'(0) = \langle \nabla L(\theta), d\rangle` and
  :math:`f''(0) = d^\top \nabla^2 L(\theta)\, d`, the coefficients of the
  quadratic model that GeN minimises (Bu & Xu, 2025, eq. 3), by ``mode``:

  * ``"auto"`` (default): ``"forward-over-forward"`` when every operation
    has a forward-mode rule, else ``"forward-over-reverse"``, decided at
    trace time (:func:`auto_mode`).
  * ``"forward-over-reverse"``: ``jax.jvp`` of ``jax.value_and_grad`` gives
    :math:`\nabla L` and the Hessian-vector product :math:`Hd` in one pass;
    then :math:`d^\top H d = \langle d, Hd \rangle`.  Exact; works for every
    function ``jax.grad`` differentiates, ``jax.custom_vjp`` included.
  * ``"forward-over-forward"``: ``jax.jvp`` of ``jax.jvp`` gives :math:`f'(0)`
    and :math:`f''(0)` directly.  Exact; stores no backward activations, but
    needs a forward-mode rule for every operation.
  * ``"probes"`` (or a :class:`Probes` with its multipliers): the
    least-squares fit, with
    :math:`y_i = L(\theta + s_i h d) - L(\theta)`,

    .. math::
      y_i \approx \beta_1 s_i + \tfrac12 \beta_2 s_i^2, \qquad
      f'(0) \approx \beta_1 / h, \quad f''(0) \approx \beta_2 / h^2,

    and its :math:`R^2` (the paper's Algorithm 1, forward passes only).  For
    :math:`s = (-1, 0, 1)` it is the central difference, error :math:`O(h^2)`.
  * ``"one-probe"``: the exact slope (from ``gradient`` if given, else one
    ``jax.jvp``) and one probe,
    :math:`f''(0) \approx 2(L(\theta + hd) - L(\theta) - h f'(0))/h^2`,
    exact on a quadratic, error :math:`O(h)` otherwise.

  Nothing raises on numerical trouble: ``step_size = 0`` or non-finite losses
  give non-finite slope or curvature, which :func:`gen` discards.

  Args:
    value_fn: the loss, ``value_fn(params) -> scalar``.
    params: the point :math:`\theta`, any pytree of float arrays.
    direction: :math:`d`, a pytree with the structure of ``params`` (cast to
      its dtypes).
    mode: one of ``"auto"``, ``"forward-over-reverse"``,
      ``"forward-over-forward"``, ``"probes"``, ``"one-probe"``, or a
      :class:`Probes` (the :math:`s_i` of ``"probes"``).
    step_size: :math:`h`, the probe step in units of ``direction`` (probe
      modes only).
    loss: :math:`L(\theta)` if already known (saves the probe modes one
      forward pass); it must be ``value_fn(params)``.
    gradient: :math:`\nabla L(\theta)` of ``value_fn`` if already known; the
      ``"one-probe"`` slope is then :math:`\langle \nabla L, d\rangle`.

  Returns:
    A :class:`LineMeasurement` ``(loss, slope, curvature, fit_r2)`` of scalars
    in the loss's dtype, at least float32 (``fit_r2`` is 1 for exact modes).

  Raises:
    ValueError, TypeError: for an unknown ``mode`` or bad :class:`Probes`;
      (as JAX raises them) when a forward-mode ``mode`` meets an operation
      without a forward-mode rule, naming the modes that work instead.

  Example:
    >>> import jax.numpy as jnp
    >>> import gen_optax
    >>> loss = lambda p: jnp.sum(p['w'] ** 3)
    >>> p, d = {'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([1.0, 0.0])}
    >>> m = gen_optax.measure_line(loss, p, d)
    >>> [float(v) for v in m]  # L = 9, L' = 3·1², L'' = 6·1, exact fit
    [9.0, 3.0, 6.0, 1.0]
    >>> q = lambda p: jnp.sum((p - 1.0) ** 2)  # probes fit a quadratic exactly
    >>> m = gen_optax.measure_line(q, jnp.zeros(2), jnp.ones(2), mode="probes",
    ...                            step_size=0.1)
    >>> [round(float(v), 4) for v in m]
    [2.0, -4.0, 4.0, 1.0]
  """
  name, probes = resolve_mode(mode)
  check_like(direction, "direction", params, "params")
  return MODES[name](
    scalar_loss(value_fn, "value_fn"),
    params,
    cast_like(direction, params),
    step_size=jnp.asarray(step_size),
    probe_multipliers=probes.multipliers,
    loss=None if loss is None else jnp.asarray(loss),
    gradient=gradient,
  )


def value_grad_and_line(
  fun: Callable[..., Any],
  params: Any,
  direction: Any,
  *,
  has_aux: bool = False,
  mode: Mode | Probes = "auto",
  step_size: jax.typing.ArrayLike = 1.0,
) -> tuple[Any, Any, LineMeasurement]:
  r"""``jax.value_and_grad(fun)(params)`` and the line along ``direction``.

  One traced computation, so XLA shares the forward pass between the
  gradient and the measurement.  ``"forward-over-reverse"`` is one
  ``jax.jvp`` of ``jax.value_and_grad`` (the gradient is its primal output);
  the other modes reuse the gradient pass's loss (and, for ``"one-probe"``,
  its gradient for the slope).

  Returns:
    ``(value, grads, measurement)``, ``value`` being ``(loss, aux)`` when
    ``has_aux``.
  """
  name, probes = resolve_mode(mode)
  check_like(direction, "the previous step", params, "params")
  direction = cast_like(direction, params)
  fun = scalar_loss(fun, "fun", has_aux)
  if not has_aux:
    fun_with_aux = lambda p: (fun(p), None)  # noqa: E731
  else:
    fun_with_aux = fun

  def value_fn(p: Any) -> jax.Array:
    return fun_with_aux(p)[0]

  if name == "auto":
    name = _exact_mode(value_fn, params, direction)
  if name == "forward-over-reverse":
    loss, aux, grads, measurement = _reverse(fun_with_aux, params, direction)
  else:
    (loss, aux), grads = jax.value_and_grad(fun_with_aux, has_aux=True)(params)
    measurement = MODES[name](
      value_fn,
      params,
      direction,
      step_size=jnp.asarray(step_size),
      probe_multipliers=probes.multipliers,
      loss=loss,
      gradient=grads,
    )
  return ((loss, aux) if has_aux else loss), grads, measurement
