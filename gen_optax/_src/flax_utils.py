"""Flax glue: GeN's ``value_fn`` from an NNX model, and Linen's train step.

Flax is an optional dependency (``pip install gen_optax[flax]``): it is
imported when these functions are called, not when ``gen_optax`` is.
"""

from collections.abc import Callable
from typing import Any

import jax
import optax

from gen_optax._src import fused as fused_lib
from gen_optax._src import line as line_lib
from gen_optax._src.line import LineMeasurement, Mode, Probes


def nnx_value_fn(
  model: Any,
  loss_fn: Callable[..., jax.Array],
  *args: Any,
  wrt: Any = None,
  deterministic: bool = True,
  **kwargs: Any,
) -> Callable[[Any], jax.Array]:
  r"""The loss of an NNX model as a function of its trained state.

  Returns ``value_fn(params) = loss_fn(model', *args, **kwargs)``, where
  ``model'`` is a copy of ``model`` with the ``wrt`` state replaced by
  ``params`` (the structure ``nnx.Optimizer`` passes to ``tx.update``) and
  every other state (BatchNorm statistics, RNG streams, counters) taken as it
  is now.  GeN evaluates this function and its derivatives at
  :math:`\theta + t u`; because it works on a copy, nothing it does is written
  back to ``model``: running statistics and RNG counters are unchanged.

  With ``deterministic=True`` (default) the copy is put in evaluation mode
  (``Module.eval()``: ``Dropout`` off, ``BatchNorm`` on running averages), so
  the curvature is that of the deterministic loss.  With
  ``deterministic=False`` the copy trains: BatchNorm uses batch statistics and
  dropout draws from the model's RNG streams *as they are now*, so every
  evaluation (each probe, each derivative) sees the same dropout mask.

  Args:
    model: the ``flax.nnx.Module`` being trained.
    loss_fn: ``loss_fn(model, *args, **kwargs) -> scalar``, e.g. the function
      given to ``nnx.value_and_grad``.
    *args: the batch and any other arguments of ``loss_fn``; for an unbiased
      learning rate at small batch sizes pass a batch other than the
      gradient's (see :func:`gen`).
    wrt: the filter of the trained state, as given to ``nnx.Optimizer``
      (default ``nnx.Param``).
    deterministic: evaluate in ``eval()`` mode (default) or in training mode
      with the current, fixed RNG state.
    **kwargs: keyword arguments of ``loss_fn``.

  Returns:
    ``value_fn(params) -> scalar`` for ``optimizer.update(model, grads,
    value_fn=value_fn)``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import gen_optax
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(
    ...     model, gen_optax.gen(optax.adam(1.0)), wrt=nnx.Param)
    >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    >>> loss_fn = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
    >>> @nnx.jit
    ... def train_step(model, optimizer, x, y):
    ...   loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    ...   value_fn = gen_optax.nnx_value_fn(model, loss_fn, x, y)
    ...   optimizer.update(model, grads, value_fn=value_fn)
    ...   return loss
    >>> losses = [float(train_step(model, optimizer, x, y)) for _ in range(3)]
    >>> losses[-1] < losses[0]
    True
  """
  from flax import nnx  # optional dependency

  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module, got model={model!r}.")
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable, got loss_fn={loss_fn!r}.")
  graphdef, *states = nnx.split(model, nnx.Param if wrt is None else wrt, ...)
  # Plain arrays: each merge builds fresh Variables, so an evaluation can not
  # advance RNG counters or statistics that the next evaluation would see.
  rest = nnx.as_pure(states[1])

  def value_fn(params: Any) -> jax.Array:
    copy = nnx.merge(graphdef, params, rest)
    if deterministic:
      copy.eval()
    return loss_fn(copy, *args, **kwargs)

  return value_fn


def nnx_value_and_grad(
  loss_fn: Callable[..., Any],
  *,
  has_aux: bool = False,
  mode: Mode | Probes = "auto",
  refresh: bool = True,
  wrt: Any = None,
) -> Callable[..., tuple[tuple[Any, Any], LineMeasurement | None]]:
  r"""``nnx.value_and_grad`` that also measures the loss along GeN's line.

  The NNX form of :func:`value_and_grad`: one traced computation gives the
  loss :math:`L(\theta)`, its gradient with respect to the ``wrt`` state, and
  the :class:`LineMeasurement` :math:`(L, L'(\theta)[d], L''(\theta)[d, d])`
  along the step :math:`d` that GeN (inside ``optimizer``) took last.  Like
  ``nnx.value_and_grad``, the model is called as it is (training mode, its
  RNG streams), and the state it changes (BatchNorm statistics, RNG counters)
  is written back to ``model``.

  Args:
    loss_fn: ``loss_fn(model, *args, **kwargs) -> scalar`` (or
      ``(scalar, aux)`` with ``has_aux``).
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    mode: how the line is measured, one of :func:`measure_line`'s modes
      (a :class:`Probes` for the probe points of ``"probes"``).
    refresh: a static Python bool; ``False`` skips the measurement
      (``line=None``); pass the same flag to ``optimizer.update``.
    wrt: the filter of the trained state, as given to ``nnx.Optimizer``
      (default ``nnx.Param``).

  Returns:
    ``fn(model, optimizer, *args, **kwargs) -> ((value, grads), line)``, with
    ``grads`` an ``nnx.State`` as ``nnx.value_and_grad`` returns it; then
    ``optimizer.update(model, grads, line=line)``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import gen_optax
    >>> def loss_fn(model, x, y):
    ...   return jnp.mean((model(x) - y) ** 2)
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> tx = gen_optax.gen(optax.adam(1.0))
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> x = jnp.ones((4, 2))
    >>> y = jnp.zeros((4, 1))
    >>> @nnx.jit
    ... def train_step(model, optimizer, x, y):
    ...   (loss, grads), line = gen_optax.nnx_value_and_grad(loss_fn)(
    ...       model, optimizer, x, y)
    ...   optimizer.update(model, grads, line=line)
    ...   return loss
    >>> losses = [float(train_step(model, optimizer, x, y)) for _ in range(3)]
    >>> losses[-1] < losses[0]
    True
  """
  from flax import nnx  # optional dependency

  fused_lib.validate_settings(mode, refresh)
  trained = nnx.Param if wrt is None else wrt

  def value_grad_and_line(
    model: Any, optimizer: Any, *args: Any, **kwargs: Any
  ) -> tuple[tuple[Any, Any], LineMeasurement | None]:
    if not isinstance(model, nnx.Module):
      raise TypeError(f"model must be a flax.nnx.Module, got model={model!r}.")
    graphdef, params, *others = nnx.split(model, trained, ...)
    rest = nnx.as_pure(others[0])  # fresh Variables per call: nothing shared

    def loss(p: Any) -> tuple[jax.Array, Any]:
      copy = nnx.merge(graphdef, p, rest)
      out = loss_fn(copy, *args, **kwargs)
      value, aux = out if has_aux else (out, None)
      return value, (aux, nnx.as_pure(nnx.state(copy, nnx.Not(trained))))

    if refresh:
      direction = fused_lib.previous_step(nnx.as_pure(optimizer.opt_state))
      # The stored step as the Variables of params (tangents match primals).
      direction = jax.tree.map(
        lambda v, d: v.replace(d),
        params,
        direction,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
      )
      (value, (aux, changed)), grads, line = line_lib.value_grad_and_line(
        loss,
        params,
        direction,
        has_aux=True,
        mode=mode,
      )
    else:
      ((value, (aux, changed)), grads), line = (
        jax.value_and_grad(loss, has_aux=True)(params),
        None,
      )
    nnx.update(model, changed)
    return ((value, aux) if has_aux else value, grads), line

  return value_grad_and_line


def linen_apply_gradients(state: Any, *, grads: Any, **extra_args: Any) -> Any:
  r"""``TrainState.apply_gradients`` that forwards ``value_fn`` to the optimizer.

  Flax Linen's ``TrainState.apply_gradients`` calls ``tx.update(grads,
  opt_state, params)`` with no extra arguments, so GeN never sees its
  ``value_fn``.  This does the same step with them:

  .. math::
    u, s' = \mathrm{tx.update}(g, s, \theta, **\mathrm{extra}), \quad
    \theta' = \theta + u, \quad \mathrm{step}' = \mathrm{step} + 1.

  Works for ``flax.training.train_state.TrainState`` and any subclass (extra
  fields such as ``batch_stats`` are kept).

  Args:
    state: a ``TrainState`` whose ``tx`` is, or contains, :func:`gen`.
    grads: gradients with the structure of ``state.params``.
    **extra_args: forwarded to ``tx.update``, e.g. ``value_fn=...``.

  Returns:
    The new ``TrainState``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import flax.linen as nn
    >>> from flax.training import train_state
    >>> import gen_optax
    >>> model = nn.Dense(1)
    >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    >>> state = train_state.TrainState.create(
    ...     apply_fn=model.apply,
    ...     params=model.init(jax.random.key(0), x)["params"],
    ...     tx=gen_optax.gen(optax.adam(1.0)))
    >>> loss = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)
    >>> new = gen_optax.linen_apply_gradients(
    ...     state, grads=jax.grad(loss)(state.params), value_fn=loss)
    >>> int(new.step), bool(loss(new.params) < loss(state.params))
    (1, True)
  """
  updates, opt_state = state.tx.update(
    grads, state.opt_state, state.params, **extra_args
  )
  return state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    opt_state=opt_state,
  )
