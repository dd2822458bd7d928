"""Forward-only quadratic model of a loss along a line, from loss probes.

Where second derivatives are too costly or undefined, the quadratic model
``L(θ + a·u) − L(θ) ≈ b·a + ½·c·a²`` is fitted to losses at a few points
``a = s·h`` on the line (Bu & Xu, 2025, Algorithm 1, as in their ``gen-optim``
package).  Only ``value_fn`` is evaluated: no derivative of the model.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gen_optax._src import curvature as curvature_lib


class ProbeFit(NamedTuple):
  """Least-squares quadratic fit of a loss along a direction."""

  value: jax.Array  # scalar float, L(θ)
  slope: jax.Array  # scalar float, fitted b ≈ L'(θ)[u]
  curvature: jax.Array  # scalar float, fitted c ≈ L''(θ)[u, u]
  r2: jax.Array  # scalar float, coefficient of determination of the fit


def _shift(params: Any, direction: Any, t: jax.Array) -> Any:
  """θ + t·u, in the dtypes of θ."""
  return jax.tree.map(
    lambda p, u: p + t.astype(p.dtype) * u.astype(p.dtype), params, direction
  )


def probe_losses(
  value_fn: Callable[[Any], jax.Array],
  params: Any,
  direction: Any,
  steps: jax.Array,
) -> jax.Array:
  """``[value_fn(θ + t·u) for t in steps]``, one forward pass after the other.

  ``jax.lax.map`` runs the probes sequentially: one forward pass's memory at a
  time (vmapped probes measured up to 5x slower on a CNN on CPU), and nothing
  is differentiated, so no activations are kept.
  """
  return jax.lax.map(lambda t: value_fn(_shift(params, direction, t)), steps)


def line_probes(
  value_fn: Callable[[Any], jax.Array],
  params: Any,
  direction: Any,
  step_size: jax.typing.ArrayLike,
  *,
  multipliers: Sequence[float] = (-1.0, 0.0, 1.0),
  value: jax.typing.ArrayLike | None = None,
) -> ProbeFit:
  r"""Fits the quadratic model along ``direction`` from loss probes.

  With :math:`y_i = L(\theta + s_i h u) - L(\theta)` for multipliers
  :math:`s_i` and step size :math:`h`, the least-squares fit (no intercept:
  :math:`L(\theta)` is known)

  .. math::
    y_i \approx \beta_1 s_i + \tfrac12 \beta_2 s_i^2, \qquad
    b = \beta_1 / h, \quad c = \beta_2 / h^2

  is solved in closed form (2x2 normal equations, in ``jnp``) in the unitless
  :math:`s`, which keeps it well conditioned for tiny :math:`h`.  For the
  paper's symmetric points :math:`(-1, 0, 1)` this is the central difference
  :math:`c = (y_{+} + y_{-})/h^2`, :math:`b = (y_{+} - y_{-})/2h`, with errors
  :math:`O(h^2)`.  The coefficient of determination
  :math:`R^2 = 1 - \sum_i (y_i - \hat y_i)^2 / \sum_i (y_i - \bar y)^2` measures
  how quadratic the profile is (1 for three points, which the fit matches).

  Nothing raises on numerical trouble: ``step_size = 0`` or non-finite losses
  give non-finite ``slope``/``curvature``, which :func:`gen` rejects.

  Args:
    value_fn: the loss, ``value_fn(params) -> scalar``.
    params: the point :math:`\theta`.
    direction: the direction :math:`u`.
    step_size: :math:`h`, the probe step in units of ``direction``.
    multipliers: the :math:`s_i`; at least two distinct non-zero values.
      Zeros cost nothing: they are the known point :math:`y = 0`.
    value: :math:`L(\theta)` if already known (saves one forward pass); it
      must be ``value_fn(params)``.

  Returns:
    A :class:`ProbeFit` ``(value, slope, curvature, r2)``, scalars of at least
    float32.

  Example:
    >>> import jax.numpy as jnp
    >>> import gen_optax
    >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)  # a quadratic: the fit is exact
    >>> fit = gen_optax.line_probes(loss, jnp.zeros(2), jnp.ones(2), 0.1)
    >>> [round(float(v), 4) for v in fit]  # L = 2, L' = -4, L'' = 4
    [2.0, -4.0, 4.0, 1.0]

  References:
    Bu & Xu, *Gradient descent with generalized Newton's method*, ICLR 2025,
    https://arxiv.org/abs/2407.02772
  """
  s_all = np.asarray(multipliers, np.float64)
  nonzero = s_all[s_all != 0]
  if len(set(nonzero.tolist())) < 2:
    raise ValueError(
      "multipliers need at least two distinct non-zero values to fit slope and "
      f"curvature, got multipliers={tuple(multipliers)!r}."
    )
  if value is None:
    value = value_fn(params)
  dtype = curvature_lib.scalar_dtype(value)
  value = jnp.asarray(value, dtype)
  h = jnp.asarray(step_size, dtype)
  s = jnp.asarray(nonzero, dtype)
  y = probe_losses(value_fn, params, direction, s * h).astype(dtype) - value

  # Normal equations of y ≈ β1·s + β2·s²/2 (points at s = 0 add nothing).
  s11, s12, s22 = jnp.sum(s**2), jnp.sum(s**3) / 2, jnp.sum(s**4) / 4
  r1, r2 = jnp.sum(s * y), jnp.sum(s**2 * y) / 2
  det = s11 * s22 - s12**2
  beta1 = (s22 * r1 - s12 * r2) / det
  beta2 = (s11 * r2 - s12 * r1) / det

  # R² over all points, the known y = 0 at s = 0 included.
  y_all = jnp.zeros(s_all.shape, dtype).at[np.flatnonzero(s_all)].set(y)
  fitted = beta1 * s_all.astype(dtype) + beta2 * s_all.astype(dtype) ** 2 / 2
  residual = y_all - fitted
  total = jnp.sum((y_all - jnp.mean(y_all)) ** 2)
  fit_r2 = jnp.where(total > 0, 1 - jnp.sum(residual**2) / total, jnp.nan)
  return ProbeFit(value, beta1 / h, beta2 / h**2, fit_r2.astype(dtype))


def one_probe_curvature(
  value_fn: Callable[[Any], jax.Array],
  params: Any,
  direction: Any,
  step_size: jax.typing.ArrayLike,
  value: jax.typing.ArrayLike,
  slope: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Curvature from one probe and the exact value and slope.

  .. math::
    c = \frac{2\,\big(L(\theta + h u) - L(\theta) - h\, L'(\theta)[u]\big)}{h^2},

  exact on a quadratic, with error :math:`O(h)` otherwise; one forward pass.

  Args:
    value_fn: the loss.
    params: the point :math:`\theta`.
    direction: the direction :math:`u`.
    step_size: :math:`h`.
    value: :math:`L(\theta)`.
    slope: :math:`L'(\theta)[u]`, exact (from the gradient or ``jax.jvp``).

  Returns:
    The curvature estimate, a scalar of the dtype of ``value``.

  Example:
    >>> import jax.numpy as jnp
    >>> import gen_optax
    >>> loss = lambda p: jnp.sum(p ** 2)
    >>> p, u = jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0])
    >>> float(gen_optax.one_probe_curvature(loss, p, u, 0.5, loss(p), 2.0))
    2.0

  References:
    Bu & Xu, *Gradient descent with generalized Newton's method*, ICLR 2025,
    https://arxiv.org/abs/2407.02772
  """
  value = jnp.asarray(value)
  dtype = value.dtype
  h = jnp.asarray(step_size, dtype)
  probe = probe_losses(value_fn, params, direction, h[None])[0].astype(dtype)
  return 2 * (probe - value - h * jnp.asarray(slope, dtype)) / h**2
