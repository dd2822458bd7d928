"""Loss, gradient and GeN's line measurement in one traced computation."""

from collections.abc import Callable
from typing import Any

import jax
import optax

from gen_optax._src import line as line_lib
from gen_optax._src.checks import scalar_loss
from gen_optax._src.line import LineMeasurement, Mode, Probes
from gen_optax._src.state import find_state

__all__ = ("previous_step", "value_and_grad")


def previous_step(opt_state: optax.OptState) -> optax.Updates:
  """The step GeN measures along next: the last update it returned.

  Raises:
    ValueError: if ``opt_state`` holds no GeN state, or one built with
      ``measure_along="current_update"`` (that direction is only known after
      the gradient).
  """
  direction = find_state(opt_state).previous_step
  if isinstance(direction, optax.EmptyState):
    raise ValueError(
      "the measurement made with the gradient is along the previous step: "
      "build gen with measure_along='previous_step' (the default), or pass "
      "value_fn to tx.update instead."
    )
  return direction


def validate_settings(mode: Any, refresh: Any) -> None:
  """Raises ValueError/TypeError for bad settings of the fused helpers."""
  line_lib.resolve_mode(mode)
  if not isinstance(refresh, bool):
    raise TypeError(
      f"refresh must be a Python bool known at trace time, got refresh={refresh!r}."
    )


def value_and_grad(
  fun: Callable[..., Any],
  *,
  has_aux: bool = False,
  mode: Mode | Probes = "auto",
  refresh: bool = True,
) -> Callable[..., tuple[tuple[Any, Any], LineMeasurement | None]]:
  r"""``jax.value_and_grad`` that also measures the loss along GeN's line.

  GeN measures the loss along the step it took last, :math:`d`, at the
  current point and on the gradient's own batch: the direction is known
  before the gradient, so the measurement can share its forward pass.  The
  returned function computes, in one traced computation,

  .. math::
    L(\theta), \quad \nabla L(\theta), \quad
    L'(\theta)[d] = \langle \nabla L(\theta), d \rangle, \quad
    L''(\theta)[d, d] = d^\top \nabla^2 L(\theta)\, d,

  with ``mode="forward-over-reverse"`` by one ``jax.jvp`` of
  ``jax.value_and_grad`` along :math:`d` (the gradient is its primal
  output); the other modes of :func:`measure_line` (the default ``"auto"``
  included) add their measurement to the gradient pass, sharing its loss.
  Pass the measurement to ``tx.update(grads, opt_state, params,
  line=line)``; no ``value_fn`` is needed.

  Args:
    fun: the loss, ``fun(params, *args, **kwargs) -> scalar`` (or
      ``(scalar, aux)`` with ``has_aux``), as for ``jax.value_and_grad``.
    has_aux: whether ``fun`` returns ``(loss, aux)``.
    mode: how the line is measured, one of :func:`measure_line`'s modes
      (a :class:`Probes` for the probe points of ``"probes"``).
    refresh: a static Python bool; ``False`` skips the measurement (returns
      ``line=None``), for the steps between lazy refreshes; pass the same
      flag as ``refresh=`` to ``tx.update``.

  Returns:
    ``fn(params, opt_state, *args, **kwargs) -> ((value, grads), line)``,
    where ``value`` is the loss (``(loss, aux)`` with ``has_aux``) and
    ``grads`` its gradient with respect to ``params``, exactly as
    ``jax.value_and_grad(fun, has_aux=has_aux)(params, *args, **kwargs)``,
    and ``line`` a :class:`LineMeasurement` along GeN's stored previous step
    (found in ``opt_state`` with :func:`find_state`).

  Raises:
    ValueError: for an unknown ``mode``, or (when called) an ``opt_state``
      without exactly one GeN state that measures along the previous step.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gen_optax
    >>> loss = lambda p, x: jnp.sum((p - x) ** 2)
    >>> tx = gen_optax.gen(optax.adam(1.0))
    >>> @jax.jit
    ... def train_step(params, opt_state, x):
    ...   (value, grads), line = gen_optax.value_and_grad(loss)(
    ...       params, opt_state, x)
    ...   updates, opt_state = tx.update(grads, opt_state, params, line=line)
    ...   return optax.apply_updates(params, updates), opt_state, value
    >>> params, x = jnp.zeros(2), jnp.ones(2)
    >>> opt_state = tx.init(params)
    >>> for _ in range(3):
    ...   params, opt_state, value = train_step(params, opt_state, x)
    >>> # Measured along the last step d: L'' = 2‖d‖², L' = ⟨2(θ − x), d⟩.
    >>> (value, grads), line = gen_optax.value_and_grad(loss)(
    ...     params, opt_state, x)
    >>> d = gen_optax.find_state(opt_state).previous_step
    >>> print(jnp.allclose(line.curvature, 2 * d @ d),
    ...       jnp.allclose(line.slope, grads @ d))
    True True
  """
  validate_settings(mode, refresh)
  fun = scalar_loss(fun, "fun", has_aux)

  def value_grad_and_line(
    params: Any, opt_state: optax.OptState, *args: Any, **kwargs: Any
  ) -> tuple[tuple[Any, Any], LineMeasurement | None]:
    def loss(p: Any) -> Any:
      return fun(p, *args, **kwargs)

    if not refresh:
      return jax.value_and_grad(loss, has_aux=has_aux)(params), None
    value, grads, line = line_lib.value_grad_and_line(
      loss,
      params,
      previous_step(opt_state),
      has_aux=has_aux,
      mode=mode,
    )
    return (value, grads), line

  return value_grad_and_line
