"""A line measured along GeN's direction, and the rule's view of it.

:func:`measure` obtains the loss, slope and curvature along the direction
(by ``line.py``'s modes, averaged over a mapped axis); :func:`to_measurement`
turns them into the rule's :class:`~gen_optax._src.rule.Measurement`: per unit
length, at the line's start, with the reason to discard it if any.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gen_optax._src import line as line_lib
from gen_optax._src import rule as rule_lib
from gen_optax._src.line import LineMeasurement
from gen_optax._src.rule import Status


def measure(
  value_fn: Callable[[Any], jax.Array] | None,
  line: LineMeasurement | None,
  params: optax.Params,
  grads: optax.Updates,
  direction: optax.Updates,
  *,
  learning_rate: jax.Array,
  lookback: bool,
  mode: Any,
  slope_from: str,
  axis_name: str | tuple[str, ...] | None,
) -> tuple[LineMeasurement, jax.Array]:
  """The loss along ``direction`` at ``params``, and ‖direction‖.

  ``line``: the measurement if made already (with the gradient).

  ``"previous_step"``: the line of the last step d (built from earlier
  batches, so free of this batch's noise), measured at its end θ;
  ``"current_update"``: the line of this update u from θ.
  """
  dtype = learning_rate.dtype
  if axis_name is not None:
    # Under shard_map the data vary across devices while params and the
    # direction are replicated; jvp of grad then mixes the two.
    params, direction = _varying((params, direction), axis_name)
  if line is None:
    assert value_fn is not None  # checked by gen's update
    line = line_lib.measure_line(
      value_fn,
      params,
      direction,
      mode=mode,
      step_size=jnp.ones((), dtype) if lookback else learning_rate,
      gradient=grads if slope_from == "gradient" else None,
    )
  loss, slope, curvature, fit_r2 = (jnp.asarray(x, dtype) for x in line)
  if slope_from == "gradient":
    slope = line_lib.tree_vdot(grads, direction, dtype)
  if axis_name is not None:
    loss, slope, curvature = jax.lax.pmean((loss, slope, curvature), axis_name)
  norm = jnp.sqrt(line_lib.tree_vdot(direction, direction, dtype))
  return LineMeasurement(loss, slope, curvature, fit_r2), norm


def to_measurement(
  line: LineMeasurement,
  norm: jax.Array,
  *,
  rate: jax.Array,
  lookback: bool,
  min_r2: float | None = None,
  stale: jax.Array | bool = False,
) -> rule_lib.Measurement:
  """The rule's view of one measured line: per unit length, with why to discard.

  ``line`` is along the measured direction (of norm ``norm``), which is
  ``rate`` times the inner update it came from.  Along the previous step,
  measured at its end, the quadratic model's slope at the start is s − |c|;
  along the current update, the start is where it was measured.  ``min_r2``:
  the gate on the probe fit (None: none); ``stale``: the stored step is not
  the last step (which did not store itself).
  """
  loss, slope, curvature, fit_r2 = line
  safe_norm = jnp.where(norm > 0, norm, 1)
  start_slope = slope - jnp.abs(curvature) if lookback else slope
  discard = jnp.select(
    [
      jnp.asarray(stale),
      norm == 0,
      ~(jnp.isfinite(loss) & jnp.isfinite(slope) & jnp.isfinite(curvature)),
      jnp.asarray(False) if min_r2 is None else ~(fit_r2 >= min_r2),  # NaN fails
    ],
    [Status.STALE_STEP, Status.ZERO_DIRECTION, Status.NON_FINITE, Status.POOR_FIT],
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
