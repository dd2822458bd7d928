"""Checks of arguments shared by the modules: numbers, ranges, trees, callables.

Each raises ``ValueError`` or ``TypeError`` naming the argument and its value,
at construction or trace time (from static structure, shape and dtype), never
inside traced code.  The settings themselves are checked by the module that
owns them (the rule's in ``rule.py``, the line's in ``line.py``).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def as_number(name: str, value: Any) -> float | None:
  """``float(value)``, or None for a traced value (``inject_hyperparams``)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a real number, got {name}={value!r}.") from None


def check_range(
  name: str, value: Any, holds: Callable[[float], bool], must: str
) -> None:
  """Raises ValueError unless ``holds(float(value))``; None and tracers pass.

  The message is ``"{name} must {must}, got {name}={value!r}."``.
  """
  number = None if value is None else as_number(name, value)
  if number is not None and not holds(number):
    raise ValueError(f"{name} must {must}, got {name}={value!r}.")


def check_transformation(tx: Any, name: str, example: str) -> None:
  """Raises TypeError unless ``tx`` has callable ``init`` and ``update``."""
  if not (
    callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))
  ):
    raise TypeError(
      f"{name} must be an optax.GradientTransformation (e.g. {example}), "
      f"got {name}={tx!r}."
    )


def check_like(tree: Any, name: str, like: Any, like_name: str) -> None:
  """Raises ValueError unless ``tree`` has the structure and shapes of ``like``.

  Checked at trace time (structures and shapes are static), so a mismatch
  names the arguments instead of surfacing as a broadcasting error.
  """
  tree_structure, like_structure = jax.tree.structure(tree), jax.tree.structure(like)
  if tree_structure != like_structure:  # type: ignore[operator]
    raise ValueError(
      f"{name} must have the tree structure of {like_name}: got {tree_structure} "
      f"for {name} and {like_structure} for {like_name}."
    )
  for (path, a), b in zip(
    jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(like), strict=True
  ):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
        f"{name}{jax.tree_util.keystr(path)} has shape {jnp.shape(a)}, but "
        f"{like_name}{jax.tree_util.keystr(path)} has shape {jnp.shape(b)}."
      )


def check_floating(params: Any, name: str = "params") -> None:
  """Raises TypeError for a leaf that is not floating point (GeN moves every leaf).

  Freeze integer leaves outside the optimized tree (or with ``optax.masked``
  inside ``gen``'s inner optimizer).
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
        f"{name}{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}: "
        "gen steps every leaf by α·u, which needs floating-point parameters."
      )


def scalar_loss(fun: Callable[..., Any], name: str, has_aux: bool = False) -> Callable:
  """``fun`` checked to return a real scalar (and aux if ``has_aux``) when traced.

  The check runs on the traced output's static shape and dtype: no extra
  trace, no run-time cost.
  """
  if not callable(fun):
    raise TypeError(f"{name} must be callable, got {name}={fun!r}.")

  def checked(*args: Any, **kwargs: Any) -> Any:
    out = fun(*args, **kwargs)
    if has_aux and not (isinstance(out, tuple) and len(out) == 2):
      raise TypeError(
        f"{name} has has_aux=True, so it must return a pair (loss, aux), got "
        f"{type(out).__name__}."
      )
    loss = out[0] if has_aux else out
    shape, dtype = jnp.shape(loss), jnp.result_type(loss)
    if shape != () or not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f"{name} must return a real scalar loss, got an array of shape {shape} "
        f"and dtype {dtype} (average over the batch, e.g. jnp.mean)."
      )
    return out

  return checked
