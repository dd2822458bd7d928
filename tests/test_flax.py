"""Flax NNX and Linen training loops with GeN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import gen_optax


class NoisyMLP(nnx.Module):
  """An MLP with BatchNorm and Dropout: non-trained state and randomness."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(4, 16, rngs=rngs)
    self.norm = nnx.BatchNorm(16, rngs=rngs)
    self.dropout = nnx.Dropout(0.3, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    h = self.dropout(nnx.relu(self.norm(self.hidden(x))))
    return self.out(h)


def loss_fn(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


def _data(seed, n=64):
  x = jax.random.normal(jax.random.key(seed), (n, 4))
  return x, jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2]


def _frozen_state(model):
  return jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat, nnx.RngState))


def test_nnx_value_fn_is_the_eval_mode_loss_and_mutates_nothing():
  model = NoisyMLP(nnx.Rngs(0))
  x, y = _data(1)
  loss_fn_train = nnx.value_and_grad(loss_fn)
  loss_fn_train(model, x, y)  # move the running statistics off their init
  before = _frozen_state(model)
  params = nnx.state(model, nnx.Param)

  value_fn = gen_optax.nnx_value_fn(model, loss_fn, x, y)
  value = value_fn(params)
  jax.grad(value_fn)(params)

  chex_equal = jax.tree.map(
    lambda a, b: bool(jnp.all(a == b)), before, _frozen_state(model)
  )
  assert all(jax.tree.leaves(chex_equal))
  model.eval()
  np.testing.assert_allclose(value, loss_fn(model, x, y), rtol=1e-6)
  model.train()
  # Perturbed params change the value: it really reads its argument.
  shifted = jax.tree.map(lambda p: p + 0.1, params)
  assert float(value_fn(shifted)) != float(value)


def test_nnx_value_fn_training_mode_uses_one_fixed_dropout_mask():
  model = NoisyMLP(nnx.Rngs(0))
  x, y = _data(2)
  params = nnx.state(model, nnx.Param)
  value_fn = gen_optax.nnx_value_fn(model, loss_fn, x, y, deterministic=False)
  first, second = value_fn(params), value_fn(params)
  assert float(first) == float(second)  # same key every evaluation
  model.eval()
  assert float(first) != float(loss_fn(model, x, y))  # dropout was on


@pytest.mark.parametrize(
  "mode", ["forward-over-reverse", "forward-over-forward", "probes"]
)
def test_nnx_optimizer_trains_and_gen_leaves_statistics_alone(mode):
  model = NoisyMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, gen_optax.gen(optax.adam(1.0), mode=mode), wrt=nnx.Param
  )

  @nnx.jit
  def train_step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(loss_fn)(model, *batch)
    before = nnx.state(model, nnx.BatchStat, nnx.RngState)
    optimizer.update(
      model, grads, value_fn=gen_optax.nnx_value_fn(model, loss_fn, *batch)
    )
    after = nnx.state(model, nnx.BatchStat, nnx.RngState)
    unchanged = jax.tree.map(lambda a, b: jnp.all(a == b), before, after)
    return loss, jnp.all(jnp.stack(jax.tree.leaves(unchanged)))

  x_eval, y_eval = _data(99, n=256)
  model.eval()
  initial = float(loss_fn(model, x_eval, y_eval))
  model.train()
  for step in range(100):
    _, unchanged = train_step(model, optimizer, _data(step))
    assert bool(unchanged)
  model.eval()
  final = float(loss_fn(model, x_eval, y_eval))
  gen_state = optimizer.opt_state
  assert final < 0.5 * initial, (initial, final)
  learning_rate = float(gen_optax.learning_rate(gen_state))
  accepted = int(optax.tree.get(gen_state, "num_accepted"))
  assert accepted > 30
  # Never above the warm-up cap init · 1.05^accepted; risen above init.
  assert 2e-3 < learning_rate <= 1e-3 * 1.05**accepted * (1 + 1e-6)


def _same(a, b, rtol=0.0):
  def close(x, y):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    return np.allclose(x, y, rtol=rtol, atol=0)

  return all(jax.tree.leaves(jax.tree.map(close, a, b)))


@pytest.mark.parametrize("mode", ["forward-over-reverse", "probes"])
def test_nnx_fused_step_is_nnx_value_and_grad_plus_the_line(mode):
  """Same loss, gradients and written-back state (BatchNorm, dropout RNG)."""
  models = [NoisyMLP(nnx.Rngs(0)) for _ in range(2)]
  optimizer = nnx.Optimizer(
    models[1], gen_optax.gen(optax.adam(1.0), mode=mode), wrt=nnx.Param
  )
  x, y = _data(3)
  # A non-zero previous step, so the line is not trivially zero.
  direction = jax.tree.map(
    lambda p: 0.01 * jnp.ones_like(p), nnx.as_pure(nnx.state(models[1], nnx.Param))
  )
  state = nnx.as_pure(optimizer.opt_state)
  nnx.update(optimizer.opt_state, nnx.state(state._replace(previous_step=direction)))

  loss_a, grads_a = nnx.value_and_grad(loss_fn)(models[0], x, y)
  (loss_b, grads_b), line = gen_optax.nnx_value_and_grad(loss_fn, mode=mode)(
    models[1], optimizer, x, y
  )
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  assert _same(nnx.as_pure(grads_a), nnx.as_pure(grads_b), rtol=1e-5)
  after = [nnx.as_pure(_frozen_state(m)) for m in models]
  assert _same(*after)  # statistics and RNG counters advanced alike
  # The line's slope is ⟨∇L, d⟩ on the same batch, dropout mask included.
  pairs = zip(
    jax.tree.leaves(nnx.as_pure(grads_b)), jax.tree.leaves(direction), strict=True
  )
  slope = sum(jnp.vdot(g, d) for g, d in pairs)
  tolerance = 1e-5 if mode == "forward-over-reverse" else 1e-2  # O(h²) fit
  np.testing.assert_allclose(line.slope, slope, rtol=tolerance)


def test_nnx_fused_training_equals_the_value_fn_loop():
  """Deterministic model: the fused and the value_fn loop take the same steps."""
  runs = []
  for fused in (False, True):
    model = nnx.Sequential(
      nnx.Linear(4, 16, rngs=nnx.Rngs(0)), nnx.tanh, nnx.Linear(16, 1, rngs=nnx.Rngs(1))
    )
    optimizer = nnx.Optimizer(model, gen_optax.gen(optax.adam(1.0)), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y, fused=fused):
      if fused:
        fn = gen_optax.nnx_value_and_grad(loss_fn)
        (loss, grads), line = fn(model, optimizer, x, y)
        optimizer.update(model, grads, line=line)
      else:
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        value_fn = gen_optax.nnx_value_fn(model, loss_fn, x, y)
        optimizer.update(model, grads, value_fn=value_fn)
      return loss

    for step in range(12):
      train_step(model, optimizer, *_data(step))
    runs.append((nnx.as_pure(nnx.state(model)), optimizer))
  (state_a, opt_a), (state_b, opt_b) = runs
  assert int(gen_optax.find_state(nnx.as_pure(opt_b.opt_state)).rule.num_accepted) > 8
  np.testing.assert_allclose(
    gen_optax.learning_rate(nnx.as_pure(opt_a.opt_state)),
    gen_optax.learning_rate(nnx.as_pure(opt_b.opt_state)),
    rtol=1e-5,
  )
  assert _same(state_a, state_b, rtol=1e-4)


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(1)(nn.relu(x))


def _linen_state(tx):
  model = LinenNet()
  x, _ = _data(0)
  variables = model.init(jax.random.key(0), x, train=False)

  class TrainState(train_state.TrainState):
    batch_stats: dict

  return model, TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=tx,
    batch_stats=variables["batch_stats"],
  )


def _linen_grads(model, state, x, y):
  def loss(params):
    pred, updates = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.mean((pred - y) ** 2), updates

  (_, updates), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  return grads, updates["batch_stats"]


def test_linen_apply_gradients_matches_train_state_for_plain_optimizers():
  model, state = _linen_state(optax.adamw(1e-2))
  grads, _ = _linen_grads(model, state, *_data(1))
  ours = gen_optax.linen_apply_gradients(state, grads=grads)
  theirs = state.apply_gradients(grads=grads)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), ours, theirs))


def test_linen_train_state_with_gen_trains():
  model, state = _linen_state(gen_optax.gen(optax.adam(1.0)))

  def eval_loss(params, batch_stats, x, y):
    pred = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return jnp.mean((pred - y) ** 2)

  @jax.jit
  def train_step(state, batch, fresh):
    grads, batch_stats = _linen_grads(model, state, *batch)
    # Running averages, not batch statistics: a deterministic value_fn.
    value_fn = lambda p: eval_loss(p, batch_stats, *fresh)  # noqa: E731
    state = gen_optax.linen_apply_gradients(state, grads=grads, value_fn=value_fn)
    return state.replace(batch_stats=batch_stats)

  x_eval, y_eval = _data(99, n=256)
  initial = float(eval_loss(state.params, state.batch_stats, x_eval, y_eval))
  late = []
  for step in range(100):
    state = train_step(state, _data(2 * step), _data(2 * step + 1))
    if step >= 80:
      late.append(float(eval_loss(state.params, state.batch_stats, x_eval, y_eval)))
  assert int(state.step) == 100
  # Averaged over the last 20 steps: BatchNorm's running statistics lag the
  # parameters, so the eval loss of any single step jumps around.
  assert np.mean(late) < 0.5 * initial, (initial, late)
  assert int(state.opt_state.rule.num_accepted) > 50


def test_linen_fused_line_takes_the_value_fn_steps():
  model = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(1)])
  x, _ = _data(0)
  params = model.init(jax.random.key(0), x)["params"]

  def loss(params, x, y):
    return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

  states = []
  for fused in (False, True):
    state = train_state.TrainState.create(
      apply_fn=model.apply, params=params, tx=gen_optax.gen(optax.adam(1.0))
    )

    @jax.jit
    def train_step(state, x, y, fused=fused):
      if fused:
        fn = gen_optax.value_and_grad(loss)
        (_, grads), line = fn(state.params, state.opt_state, x, y)
        return gen_optax.linen_apply_gradients(state, grads=grads, line=line)
      grads = jax.grad(loss)(state.params, x, y)
      value_fn = lambda p: loss(p, x, y)  # noqa: E731
      return gen_optax.linen_apply_gradients(state, grads=grads, value_fn=value_fn)

    for step in range(12):
      state = train_step(state, *_data(step))
    states.append(state)
  assert int(states[1].opt_state.rule.num_accepted) > 8
  np.testing.assert_allclose(
    states[0].opt_state.learning_rate, states[1].opt_state.learning_rate, rtol=1e-5
  )
  assert _same(states[0].params, states[1].params, rtol=1e-4)


def test_nnx_value_fn_rejects_non_modules():
  with pytest.raises(TypeError, match=r"model must be a flax\.nnx\.Module"):
    gen_optax.nnx_value_fn(lambda x: x, loss_fn)


def test_a_forgotten_value_fn_names_the_nnx_and_linen_fix():
  # The first mistake of a Flax user: the optimizer's update without value_fn.
  # The error raised from inside flax names the call to write in each API.
  model = NoisyMLP(nnx.Rngs(0))
  x, y = _data(5)
  optimizer = nnx.Optimizer(model, gen_optax.gen(optax.adam(1.0)), wrt=nnx.Param)
  grads = nnx.grad(loss_fn)(model, x, y)
  with pytest.raises(TypeError) as nnx_error:
    optimizer.update(model, grads)
  linen_model = nn.Dense(1)
  params = linen_model.init(jax.random.key(0), x)
  state = train_state.TrainState.create(
    apply_fn=linen_model.apply, params=params, tx=gen_optax.gen(optax.adam(1.0))
  )
  with pytest.raises(TypeError) as linen_error:
    state.apply_gradients(grads=jax.tree.map(jnp.zeros_like, params))
  for error in (nnx_error, linen_error):
    message = str(error.value)
    assert "value_fn=None" in message
    assert "optimizer.update(model, grads, value_fn=gen_optax.nnx_value_fn(" in message
    assert "gen_optax.linen_apply_gradients(state, grads=grads, value_fn=" in message
