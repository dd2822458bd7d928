"""Checks of gen's update call: what it was given, and what nothing would read.

All at trace time, from static structure, types and shapes.
"""

import difflib
from collections.abc import Callable
from typing import Any

import jax
import optax

from gen_optax._src.checks import check_like
from gen_optax._src.line import LineMeasurement
from gen_optax._src.state import GeNState

# The same call in the loops users write first (flax's optimizers forward
# keyword arguments to tx.update).
_FRAMEWORK_FORMS = (
  " In Flax NNX: optimizer.update(model, grads, "
  "value_fn=gen_optax.nnx_value_fn(model, loss_fn, batch)). In Flax Linen "
  "(TrainState.apply_gradients does not forward it): "
  "gen_optax.linen_apply_gradients(state, grads=grads, "
  "value_fn=lambda p: loss_fn(p, batch))."
)


def has_masked_nodes(tree: Any) -> bool:
  """Whether `tree` comes from inside `optax.masked`/`optax.partition`."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  return any(map(is_masked, jax.tree.leaves(tree, is_leaf=is_masked)))


GEN_EXTRA_ARGS = ("value_fn", "line", "refresh", "refresh_next")


def check_extra_args(extra_args: dict[str, Any], inner_takes_them: bool) -> None:
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


def check_update_call(
  updates: optax.Updates,
  state: Any,
  params: optax.Params | None,
  *,
  value_fn: Callable[[Any], jax.Array] | None,
  line: Any,
  refresh: Any,
  refresh_next: Any,
  lookback: bool,
) -> None:
  """Raises ValueError/TypeError naming what is wrong with an update call."""
  for name, flag in (("refresh", refresh), ("refresh_next", refresh_next)):
    if flag is not None and not isinstance(flag, bool):
      raise TypeError(
        f"{name} must be a Python bool known at trace time (mark it static in "
        "jax.jit) or None to follow refresh_every, got "
        f"{name}={flag!r}."
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
  check_like(updates, "updates (the gradient)", params, "params")
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
  if has_masked_nodes(params):
    raise ValueError(
      "gen received params with optax.MaskedNode leaves: it sits inside "
      "optax.masked or optax.partition, where value_fn would see only part of "
      "the parameters. Put gen outside and the masking inside: "
      "gen(optax.partition({...}, labels)) or gen(optax.masked(inner, mask))."
    )
