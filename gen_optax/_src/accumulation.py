"""Gradient accumulation that runs the wrapped update only when it emits.

``optax.MultiSteps`` calls its inner update on every mini-step and discards the
result with ``jnp.where``; under GeN that pays for the curvature every
mini-step.  Here the inner update sits in the taken branch of ``lax.cond``.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gen_optax._src.checks import check_transformation


class MultiStepsState(NamedTuple):
  """State of :func:`multi_steps`."""

  mini_step: jax.Array  #: scalar int32, in [0, every_k)
  acc_grads: optax.Updates  #: mean of this cycle's gradients (≥ float32)
  inner_state: optax.OptState  #: state of the wrapped transformation


def multi_steps(
  tx: optax.GradientTransformation, every_k: int
) -> optax.GradientTransformationExtraArgs:
  r"""Accumulates ``every_k`` gradients, then applies ``tx`` to their mean.

  On mini-steps :math:`i = 1, \dots, k` it keeps
  :math:`\bar g_i = \bar g_{i-1} + (g_i - \bar g_{i-1})/i` and returns zero
  updates; on mini-step :math:`k` it returns ``tx.update(ḡ_k, ...)`` and
  resets.  Only that emitting call runs ``tx.update`` (``jax.lax.cond``), so
  :func:`gen` computes its curvature once per ``every_k`` mini-steps.  Extra
  arguments (``value_fn``) are forwarded on the emitting call; there,
  ``value_fn`` should see the data of the whole accumulated batch (or a fresh
  batch), not only the last micro-batch.

  With equal micro-batches and a mean loss, :math:`\bar g_k` is the gradient
  of the large batch, so the result equals ``tx`` on that batch.

  Args:
    tx: the transformation to accumulate for, e.g. ``gen(optax.adam(1.0))``.
    every_k: number of mini-steps per update, an int >= 1.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`MultiStepsState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gen_optax
    >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
    >>> inner = gen_optax.gen(optax.sgd(1.0), measure_along="current_update",
    ...                       warmup_growth=None)
    >>> tx = gen_optax.multi_steps(inner, every_k=2)
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params,
    ...                              value_fn=loss)
    ...   params = optax.apply_updates(params, updates)
    ...   print(params.round(4))
    [0. 0.]
    [1. 1.]
  """
  check_transformation(tx, "tx", "gen_optax.gen(...)")
  if isinstance(every_k, bool) or not isinstance(every_k, int):
    raise TypeError(f"every_k must be an int, got every_k={every_k!r}.")
  if every_k < 1:
    raise ValueError(f"every_k must be >= 1, got every_k={every_k!r}.")
  inner = optax.with_extra_args_support(tx)

  def accumulator_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)

  def init_fn(params: optax.Params) -> MultiStepsState:
    return MultiStepsState(
      mini_step=jnp.zeros((), jnp.int32),
      acc_grads=jax.tree.map(
        lambda p: jnp.zeros(p.shape, accumulator_dtype(p)), params
      ),
      inner_state=inner.init(params),
    )

  def update_fn(
    updates: optax.Updates,
    state: MultiStepsState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, MultiStepsState]:
    count = state.mini_step + 1
    acc_grads = jax.tree.map(
      lambda a, g: a + (g.astype(a.dtype) - a) / count.astype(a.dtype),
      state.acc_grads,
      updates,
    )

    def emit() -> tuple[optax.Updates, optax.OptState, optax.Updates]:
      mean = optax.tree.cast_like(acc_grads, updates)
      new_updates, inner_state = inner.update(
        mean, state.inner_state, params, **extra_args
      )
      return new_updates, inner_state, optax.tree.zeros_like(acc_grads)

    def hold() -> tuple[optax.Updates, optax.OptState, optax.Updates]:
      shapes = jax.eval_shape(emit)[0]
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      return zeros, state.inner_state, acc_grads

    new_updates, inner_state, acc_grads = jax.lax.cond(
      state.mini_step == every_k - 1, emit, hold
    )
    return new_updates, MultiStepsState(
      mini_step=(state.mini_step + 1) % every_k,
      acc_grads=acc_grads,
      inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
