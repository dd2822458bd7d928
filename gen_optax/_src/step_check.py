"""The step check: whether the params moved by the step gen returned.

GeN measures along the step it returned last, which is right only if that
step was applied (gen last in a chain).  Before a refresh it stores
⟨θ + d, d⟩ for its step d; the refresh compares it with ⟨θ', d⟩ at the params
it is given, and counts the refreshes where they differ beyond rounding.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gen_optax._src.line import tree_vdot

# Rounding allowed in the step check, in units of the accumulation dtype's
# epsilon times Σ|θ'ᵢdᵢ|: a pairwise sum of n terms errs by at most
# ~log₂(n)·ε·Σ|xᵢ|, and 64 covers any n below 2⁶⁴ with room for the order of
# the two sums (two programs).  A relative 1e-3 of ‖d‖² on top: a step
# changed by less than 0.1% changes no measurement that matters.
_CHECK_ROUNDING = 64
_CHECK_RELATIVE = 1e-3
# The check reads the small leaves only (biases, norms, small heads: every
# leaf of at most this many elements, or else the smallest leaf): the
# transformations that follow gen by mistake (a clip, a scale, a decay) act
# on every leaf, and reading all of them would cost passes over the params.
_CHECK_MAX_SIZE = 2**16


def _checked(tree: Any) -> list[Any]:
  """The leaves of a params-shaped tree that the step check reads."""
  leaves = jax.tree.leaves(tree)
  sizes = [int(np.size(leaf)) for leaf in leaves]
  chosen = [i for i, n in enumerate(sizes) if n <= _CHECK_MAX_SIZE]
  if not chosen:
    chosen = [int(np.argmin(sizes))]
  return [leaves[i] for i in chosen]


def step_check(
  params: optax.Params,
  updates: optax.Updates,
  stored: optax.Updates,
  dtype: Any,
) -> tuple[jax.Array, jax.Array]:
  """(⟨θ + d, d̃⟩, its tolerance) for the step d returned and its stored copy d̃.

  ``θ + d`` is formed as ``optax.apply_updates`` forms it, so that a step
  applied unchanged gives the same elements, and only the order of the sum
  differs at the next update.  ``dtype``: that of the sums (α's).
  """
  params, updates, stored = _checked(params), _checked(updates), _checked(stored)
  low_precision = any(
    jnp.finfo(leaf.dtype).bits < 32
    for leaf in jax.tree.leaves(params)
    if jnp.issubdtype(leaf.dtype, jnp.floating)
  )
  if low_precision:
    # XLA may keep a bfloat16 sum in float32 inside a fusion (excess
    # precision); the params the next update sees were rounded.  Barriers
    # make this program round where the user's apply_updates rounds.
    updates = jax.lax.optimization_barrier(updates)
  moved = optax.apply_updates(params, updates)
  if low_precision:
    moved = jax.lax.optimization_barrier(moved)
  check = tree_vdot(moved, stored, dtype)
  magnitude = tree_vdot(
    jax.tree.map(jnp.abs, moved), jax.tree.map(jnp.abs, stored), dtype
  )
  eps = jnp.finfo(dtype).eps
  tolerance = (
    _CHECK_RELATIVE * tree_vdot(stored, stored, dtype)
    + _CHECK_ROUNDING * eps * magnitude
  )
  return check, tolerance


def step_changed(
  params: optax.Params,
  stored: optax.Updates,
  check: jax.Array,
  tolerance: jax.Array,
  dtype: Any,
) -> jax.Array:
  """Whether the params moved by other than the stored step (bool scalar).

  ``check`` and ``tolerance``: what :func:`step_check` returned for it.
  """
  observed = tree_vdot(_checked(params), _checked(stored), dtype)
  # An infinite tolerance (nothing to check) or a NaN compares False.
  return jnp.abs(observed - check) > tolerance
