"""An interrupted and resumed run equals the uninterrupted one, bit for bit."""

import flax.serialization
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import bitwise_equal
from flax import nnx

import gen_optax


def _problem():
  key = jax.random.key(0)
  x = jax.random.normal(key, (256, 5))
  y = jnp.sin(x @ jnp.arange(1.0, 6.0) / 5)
  params = {"w": jax.random.normal(key, (5, 16)) / 2, "v": jnp.zeros(16)}

  def loss(p, i):
    # Step-dependent batches: the resumed run must see the same data order.
    xb = jax.lax.dynamic_slice_in_dim(x, (i % 8) * 32, 32)
    yb = jax.lax.dynamic_slice_in_dim(y, (i % 8) * 32, 32)
    return jnp.mean((jnp.tanh(xb @ p["w"]) @ p["v"] - yb) ** 2)

  return params, loss


def _tx():
  return gen_optax.gen(
    optax.adamw(1.0, weight_decay=1e-2),
    refresh_every=2,
    multiplier=optax.cosine_decay_schedule(1.0, 20),
  )


def test_orbax_checkpoint_resume_is_bitwise(tmp_path):
  params, loss = _problem()
  tx = _tx()

  @jax.jit
  def step(p, s, i):
    grads = jax.grad(loss)(p, i)
    updates, s = tx.update(grads, s, p, value_fn=lambda q: loss(q, i + 1))
    return optax.apply_updates(p, updates), s

  def run(p, s, start, stop):
    for i in range(start, stop):
      p, s = step(p, s, jnp.asarray(i, jnp.int32))
    return p, s

  straight = run(params, tx.init(params), 0, 10)

  first_half = run(params, tx.init(params), 0, 5)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "step5", {"params": first_half[0], "opt": first_half[1]})
  checkpointer.wait_until_finished()
  abstract = jax.eval_shape(lambda: {"params": params, "opt": tx.init(params)})
  restored = checkpointer.restore(tmp_path / "step5", abstract)
  assert isinstance(restored["opt"], gen_optax.GeNState)
  assert bitwise_equal(restored["opt"], first_half[1])
  resumed = run(restored["params"], restored["opt"], 5, 10)

  assert bitwise_equal(resumed, straight)
  assert int(resumed[1].info.num_refreshes) == 5


class Net(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(5, 16, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))[:, 0]


@pytest.mark.slow  # several seconds: the slow tier (CI runs both)
def test_nnx_optimizer_state_roundtrips_through_flax_serialization():
  key = jax.random.key(1)
  x = jax.random.normal(key, (64, 5))
  y = jnp.cos(x[:, 0])

  def loss_fn(model, xb, yb):
    return jnp.mean((model(xb) - yb) ** 2)

  @nnx.jit
  def train_step(model, optimizer, i):
    xb = jax.lax.dynamic_slice_in_dim(x, i * 16, 16)
    yb = jax.lax.dynamic_slice_in_dim(y, i * 16, 16)
    grads = nnx.grad(loss_fn)(model, xb, yb)
    optimizer.update(
      model, grads, value_fn=gen_optax.nnx_value_fn(model, loss_fn, x, y)
    )

  def fresh():
    model = Net(nnx.Rngs(0))
    return model, nnx.Optimizer(model, _tx(), wrt=nnx.Param)

  model, optimizer = fresh()
  for i in range(8):
    train_step(model, optimizer, i % 4)
  straight = nnx.state((model, optimizer))

  model, optimizer = fresh()
  for i in range(4):
    train_step(model, optimizer, i % 4)
  saved = flax.serialization.to_bytes(nnx.to_pure_dict(nnx.state((model, optimizer))))

  model, optimizer = fresh()  # a new process would start from scratch too
  state = nnx.state((model, optimizer))
  pure = flax.serialization.msgpack_restore(saved)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update((model, optimizer), state)
  for i in range(4, 8):
    train_step(model, optimizer, i % 4)

  assert bitwise_equal(nnx.state((model, optimizer)), straight)
  assert int(gen_optax.find_state(nnx.as_pure(optimizer.opt_state)).count) == 8
