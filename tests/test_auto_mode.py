"""mode="auto": forward-over-forward where it can run, forward-over-reverse else.

Each case checks the choice (``auto_mode``) and that training with ``"auto"``
takes exactly the steps of the explicit mode it chose: the same traced
measurement, so the same compiled arithmetic, bit for bit.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import bitwise_equal, tanh_mlp
from flax import nnx

import gen_optax

FOF, FOR = "forward-over-forward", "forward-over-reverse"


@jax.custom_vjp
def _softplus(x):  # residuals that depend on x: forward mode fails at trace time
  return jnp.logaddexp(x, 0.0)


_softplus.defvjp(
  lambda x: (jnp.logaddexp(x, 0.0), x), lambda x, g: (g * jax.nn.sigmoid(x),)
)


@jax.custom_vjp
def _clip_gradient(x):  # on a weight: the trace succeeds, lowering would fail
  return x


_clip_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -1.0, 1.0),))


def _with(
  fn: Callable[[jax.Array], jax.Array], on_weight: Callable = lambda w: w
) -> tuple[Any, Callable]:
  """The tanh MLP's params; ``fn`` applied to its hidden layer, ``on_weight``
  to its first weight (as a straight-through estimator would be)."""
  params, _ = tanh_mlp(dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(5), (16, 3))

  def loss(p):
    h = fn(jnp.tanh(x @ on_weight(p["hidden"]["w"]) + p["hidden"]["b"]))
    w, b = p["out"]
    return jnp.mean((h @ w + b) ** 2)

  return params, loss


CASES = {
  "plain": (_with(lambda h: h), FOF),
  "jax.checkpoint": (_with(jax.checkpoint(lambda h: jnp.sin(h) * h)), FOF),
  "custom_jvp": (_with(jax.nn.softplus), FOF),  # jax.nn.softplus's own rule
  "custom_vjp with residuals": (_with(_softplus), FOR),
  # Its linearisation (custom_lin) takes only the direction, which forward
  # mode does not differentiate: found in the jaxpr, not by an error.
  "custom_vjp on a weight": (_with(lambda h: h, on_weight=_clip_gradient), FOR),
}


def _train(loss, params, mode, steps=6):
  tx = gen_optax.gen(optax.adam(1.0), mode=mode)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, value_fn=loss)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


@pytest.mark.parametrize("case", CASES)
def test_auto_chooses_and_equals_the_explicit_mode(case):
  (params, loss), expected = CASES[case]
  assert gen_optax.auto_mode(loss, params) == expected
  auto, explicit = _train(loss, params, "auto"), _train(loss, params, expected)
  # Bit for bit: "auto" traces the explicit mode's measurement itself.
  assert bitwise_equal(auto, explicit)
  # ... and it measured something: α left its initial value.
  assert gen_optax.learning_rate(auto[1]) != 1e-3


def test_auto_in_the_fused_step_equals_the_explicit_mode():
  for (params, loss), expected in (CASES["plain"], CASES["custom_vjp with residuals"]):
    lines = []
    for mode in ("auto", expected):
      tx = gen_optax.gen(optax.adam(1.0))
      state = tx.init(params)
      _, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
      fused = jax.jit(gen_optax.value_and_grad(loss, mode=mode))
      lines.append(fused(jax.tree.map(lambda p: p * 0.9, params), state)[1])
    assert bitwise_equal(*lines)


def test_the_fallback_measures_the_custom_gradient_exactly():
  # The custom_vjp replaces softplus's derivative by its own (here the true
  # one): the curvature is that of the loss with jnp.logaddexp, in closed form
  # by jax.hessian.
  loss = lambda p: jnp.sum(_softplus(p) ** 2)  # noqa: E731
  params, direction = jnp.array([0.3, -1.2]), jnp.array([1.0, 2.0])
  line = gen_optax.measure_line(loss, params, direction)
  smooth = lambda p: jnp.sum(jnp.logaddexp(p, 0.0) ** 2)  # noqa: E731
  exact = direction @ jax.hessian(smooth)(params) @ direction
  np.testing.assert_allclose(line.curvature, exact, rtol=1e-5)


def test_an_error_of_the_users_code_is_raised_not_taken_for_a_fallback():
  def loss(p):
    if p.shape != (3,):
      raise ValueError("my loss wants three parameters")
    return jnp.sum(p**2)

  def typed_loss(p):
    raise TypeError(f"my loss takes a dict, got {type(p).__name__}")

  # The same exception types as JAX's missing-rule errors, other messages.
  with pytest.raises(ValueError, match="three parameters"):
    gen_optax.auto_mode(loss, jnp.ones(2))
  with pytest.raises(TypeError, match="takes a dict"):
    gen_optax.auto_mode(typed_loss, jnp.ones(2))


class _NNXNet(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, remat: bool):
    self.dense = nnx.Linear(4, 8, rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(8, 1, rngs=rngs)
    self.remat = remat

  def __call__(self, x):
    body = lambda m, x: m.drop(m.norm(nnx.gelu(m.dense(x))))  # noqa: E731
    h = nnx.remat(body)(self, x) if self.remat else body(self, x)
    return self.out(h)


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "nnx.remat"])
def test_nnx_model_with_batchnorm_and_dropout_in_eval_mode_uses_the_fast_path(remat):
  x = jax.random.normal(jax.random.key(0), (32, 4))
  y = jnp.sin(x.sum(1, keepdims=True))

  def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)

  rates = {}
  for mode in ("auto", FOF):
    model = _NNXNet(nnx.Rngs(0), remat)
    optimizer = nnx.Optimizer(
      model, gen_optax.gen(optax.adam(1.0), mode=mode), wrt=nnx.Param
    )

    @nnx.jit
    def step(model, optimizer, x, y):
      grads = nnx.grad(loss_fn)(model, x, y)
      optimizer.update(
        model, grads, value_fn=gen_optax.nnx_value_fn(model, loss_fn, x, y)
      )

    value_fn = gen_optax.nnx_value_fn(model, loss_fn, x, y)
    assert gen_optax.auto_mode(value_fn, nnx.state(model, nnx.Param)) == FOF
    for _ in range(5):
      step(model, optimizer, x, y)
    rates[mode] = (
      gen_optax.learning_rate(optimizer.opt_state),
      nnx.state(model, nnx.Param),
      nnx.state(model, nnx.BatchStat),  # unchanged by the eval-mode measurement
    )
  assert bitwise_equal(rates["auto"], rates[FOF])


def test_linen_model_uses_the_fast_path():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))

  x = jax.random.normal(jax.random.key(0), (32, 4))
  model = Net()
  params = model.init(jax.random.key(1), x)["params"]
  loss = lambda p: jnp.mean(model.apply({"params": p}, x) ** 2)  # noqa: E731
  assert gen_optax.auto_mode(loss, params) == FOF
  auto, explicit = _train(loss, params, "auto"), _train(loss, params, FOF)
  assert bitwise_equal(auto, explicit)
