"""GeN's state, and reading it from any optimizer state that contains it."""

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gen_optax._src import rule as rule_lib
from gen_optax._src.rule import Status

__all__ = ("GeNInfo", "GeNState", "diagnostics", "find_state", "learning_rate")


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


def initial_info(dtype: Any) -> GeNInfo:
  """The diagnostics before any refresh: NaN figures of α's ``dtype``."""
  # A fresh buffer per field: a state with shared buffers cannot be donated.
  nan = lambda: jnp.full((), jnp.nan, dtype)  # noqa: E731
  zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
  return GeNInfo(
    raw_learning_rate=nan(),
    slope=nan(),
    curvature=nan(),
    loss=nan(),
    fit_r2=nan(),
    weight=nan(),
    status=jnp.asarray(Status.INITIAL, jnp.int32),
    num_refreshes=zero(),
    num_changed_steps=zero(),
  )


def refreshed_info(
  info: GeNInfo,
  line: Any,
  measured: rule_lib.Measurement,
  status: jax.Array,
  weight: jax.Array,
  changed: jax.Array,
) -> GeNInfo:
  """The diagnostics after a refresh that measured ``line``.

  ``measured``: the rule's view of it (per unit length); ``changed``: whether
  the step check found the params moved by other than gen's step.
  """
  return GeNInfo(
    raw_learning_rate=-measured.slope / (jnp.abs(measured.curvature) * measured.length),
    slope=line.slope,
    curvature=line.curvature,
    loss=line.loss,
    fit_r2=line.fit_r2,
    weight=weight,
    status=status,
    num_refreshes=optax.safe_increment(info.num_refreshes),
    num_changed_steps=info.num_changed_steps + changed.astype(jnp.int32),
  )


class GeNState(NamedTuple):
  """State of :func:`gen`."""

  #: scalar int32, number of updates so far (named as optax names its
  #: counters, which shadows ``tuple.count`` as optax's states do)
  count: jax.Array  # type: ignore[assignment]
  rule: rule_lib.RuleState  #: α, the running means and the warm-up phase
  previous_step: optax.Updates  #: the last update returned (like params), or empty
  #: scalar int32, the ``count`` at which ``previous_step`` was returned
  #: (−1: none yet); a refresh finds it stale unless it was the last step
  stored_at: jax.Array
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
