"""gen inside optax's combinators: chain, inject_hyperparams, apply_if_finite,
partition/masked, and gradient accumulation."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_step, quadratic, spd_matrix, tanh_mlp, wide_open

import gen_optax


def test_chain_applies_later_members_to_the_scaled_update():
  params, loss = tanh_mlp(dtype=jnp.float32)
  grads = jax.grad(loss)(params)
  alone = gen_optax.gen(optax.adam(1.0))
  chained = optax.chain(gen_optax.gen(optax.adam(1.0)), optax.scale(0.5))
  # Jitted: one compilation instead of op-by-op dispatch (seconds, eagerly).
  u_alone, _ = jax.jit(partial(alone.update, value_fn=loss))(
    grads, alone.init(params), params
  )
  u_chain, _ = jax.jit(partial(chained.update, value_fn=loss))(
    grads, chained.init(params), params
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(b, 0.5 * a, rtol=1e-6), u_alone, u_chain
  )


def test_inject_hyperparams_changes_max_learning_rate_at_run_time(x64):
  a, b = spd_matrix(3), np.ones(3)
  loss = quadratic(a, b)
  tx = optax.inject_hyperparams(gen_optax.gen, static_args=("refresh_every",))(
    inner=optax.sgd(1.0), max_learning_rate=10.0, smoothing=0.0, trust_ratio=None
  )
  step = make_step(tx, loss)
  params, state = jnp.zeros(3), tx.init(jnp.zeros(3))
  params, state, _ = step(params, state)
  unclamped = float(state.inner_state.learning_rate)
  assert unclamped < 10.0
  state.hyperparams["max_learning_rate"] = jnp.asarray(unclamped / 4, jnp.float64)
  params, state, _ = step(params, state)
  np.testing.assert_allclose(optax.tree.get(state, "learning_rate"), unclamped / 4)
  assert step._cache_size() == 1


def test_inject_hyperparams_needs_refresh_every_static():
  with pytest.raises(TypeError, match="static_args=\\('refresh_every',\\)"):
    optax.inject_hyperparams(gen_optax.gen)(inner=optax.sgd(1.0)).init(jnp.ones(2))


@pytest.mark.slow  # several seconds: the slow tier (CI runs both)
def test_gen_around_injected_inner_is_invariant_to_its_learning_rate(x64):
  params, loss = tanh_mlp()
  inner = optax.inject_hyperparams(optax.adam)(learning_rate=1.0)
  tx = gen_optax.gen(inner, **wide_open())
  state = tx.init(params)
  grads = jax.grad(loss)(params)
  u_one, _ = tx.update(grads, state, params, value_fn=loss)
  state.inner_state.hyperparams["learning_rate"] = jnp.asarray(1e-3)
  u_small, _ = tx.update(grads, state, params, value_fn=loss)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-9), u_one, u_small)


def test_apply_if_finite_skips_nan_gradients_without_advancing_gen():
  params, loss = tanh_mlp(dtype=jnp.float32)
  tx = optax.apply_if_finite(gen_optax.gen(optax.adam(1.0)), max_consecutive_errors=3)
  state = tx.init(params)
  grads = jax.grad(loss)(params)
  bad = jax.tree.map(lambda g: g * jnp.nan, grads)
  update = jax.jit(partial(tx.update, value_fn=loss))
  updates, state = update(bad, state, params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  assert int(state.notfinite_count) == 1
  assert int(state.inner_state.count) == 0
  updates, state = update(grads, state, params)
  assert int(state.inner_state.count) == 1
  # The skipped step stored no previous step: nothing to measure along yet.
  assert int(state.inner_state.info.status) == gen_optax.Status.ZERO_DIRECTION
  updates, state = update(grads, state, params)
  assert bool(state.inner_state.info.accepted)


def test_partition_inside_gen_is_supported_and_gen_inside_partition_is_refused():
  params, loss = tanh_mlp(dtype=jnp.float32)
  labels = {"hidden": "frozen", "out": ["train", "train"]}
  outside = gen_optax.gen(
    optax.partition({"train": optax.adam(1.0), "frozen": optax.set_to_zero()}, labels)
  )
  step = make_step(outside, loss)
  new_params, state, _ = step(params, outside.init(params))
  new_params, state, _ = step(new_params, state)  # measures along the first step
  assert jax.tree.all(
    jax.tree.map(
      lambda a, b: bool(jnp.all(a == b)), new_params["hidden"], params["hidden"]
    )
  )
  # The frozen part's stored step is zero, like its update.
  assert not any(
    bool(jnp.any(d)) for d in jax.tree.leaves(state.previous_step["hidden"])
  )
  assert not bool(jnp.all(new_params["out"][0] == params["out"][0]))
  assert bool(state.info.accepted)

  inside = optax.partition(
    {"train": gen_optax.gen(optax.adam(1.0)), "frozen": optax.set_to_zero()}, labels
  )
  with pytest.raises(ValueError, match=r"MaskedNode.*Put gen outside"):
    inside.update(jax.grad(loss)(params), inside.init(params), params, value_fn=loss)


def test_optax_multisteps_gradient_transformation_drops_value_fn_clearly():
  params, loss = tanh_mlp(dtype=jnp.float32)
  tx = optax.MultiSteps(gen_optax.gen(optax.adam(1.0)), 2).gradient_transformation()
  with pytest.raises(TypeError, match="value_fn"):
    tx.update(jax.grad(loss)(params), tx.init(params), params)


def _regression(seed, n):
  x = jax.random.normal(jax.random.key(seed), (n, 3))
  return x, jnp.tanh(x @ jnp.array([1.0, -2.0, 0.5]))


def _model_loss(p, x, y):
  return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2)


@pytest.mark.parametrize("mode", ["forward-over-reverse", "probes"])
def test_multi_steps_equals_gen_on_the_large_batch(x64, mode):
  k, micro = 4, 8
  params = {
    "w": jax.random.normal(jax.random.key(0), (3, 6)),
    "v": jnp.zeros(6),
  }
  evaluations = []

  def counted(p, x, y):
    jax.debug.callback(lambda: evaluations.append(1))
    return _model_loss(p, x, y)

  accumulated = gen_optax.multi_steps(gen_optax.gen(optax.adam(1.0), mode=mode), k)
  direct = gen_optax.gen(optax.adam(1.0), mode=mode)

  @jax.jit
  def micro_step(p, s, xb, yb, x, y):
    grads = jax.grad(_model_loss)(p, xb, yb)
    updates, s = accumulated.update(grads, s, p, value_fn=lambda q: counted(q, x, y))
    return optax.apply_updates(p, updates), s

  @jax.jit
  def large_step(p, s, x, y):
    grads = jax.grad(_model_loss)(p, x, y)
    updates, s = direct.update(grads, s, p, value_fn=lambda q: _model_loss(q, x, y))
    return optax.apply_updates(p, updates), s

  p_acc, s_acc = params, accumulated.init(params)
  p_dir, s_dir = params, direct.init(params)
  for update in range(3):
    x, y = _regression(update, k * micro)
    for i in range(k):
      sl = slice(i * micro, (i + 1) * micro)
      p_acc, s_acc = micro_step(p_acc, s_acc, x[sl], y[sl], x, y)
      if i < k - 1:
        assert int(s_acc.mini_step) == i + 1
    p_dir, s_dir = large_step(p_dir, s_dir, x, y)
  jax.effects_barrier()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), p_acc, p_dir)
  np.testing.assert_allclose(
    s_acc.inner_state.learning_rate, s_dir.learning_rate, rtol=1e-10
  )
  assert int(s_acc.inner_state.count) == 3  # gen ran once per emitted update
  per_refresh = {"forward-over-reverse": 1, "probes": 3}[mode]
  assert len(evaluations) == 3 * per_refresh  # value_fn ran on emitting steps only


def test_multi_steps_validates_every_k():
  with pytest.raises(ValueError, match="every_k=0"):
    gen_optax.multi_steps(optax.sgd(1.0), 0)
  with pytest.raises(TypeError, match=r"every_k=2\.5"):
    gen_optax.multi_steps(optax.sgd(1.0), 2.5)  # type: ignore[arg-type]


def _train_chain(tx, steps, dtype=jnp.float32, fused=False):
  """``steps`` jitted updates of ``tx`` on the tanh MLP; returns gen's state."""
  params, loss = tanh_mlp(dtype=dtype)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    if fused:
      (_, grads), line = gen_optax.value_and_grad(loss)(params, state)
      updates, state = tx.update(grads, state, params, line=line)
    else:
      updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return gen_optax.find_state(state)


@pytest.mark.parametrize("fused", [False, True], ids=["value_fn", "fused"])
def test_a_transformation_after_gen_is_detected_and_named(fused):
  # clip_by_global_norm after gen shortens the applied step (α grows, the
  # clip binds): GeN's measurement along the step it returned is then wrong.
  tx = optax.chain(
    gen_optax.gen(optax.adam(1.0), init_learning_rate=0.1),
    optax.clip_by_global_norm(1e-3),
  )
  state = _train_chain(tx, 6, fused=fused)
  # Every refresh after the first step saw a changed step.
  assert int(state.info.num_changed_steps) == 5
  # The logging helper says it in words, with the fix.
  with pytest.warns(UserWarning, match=r"\(5 refreshes so far\).*Put gen last"):
    assert gen_optax.diagnostics(state)["num_changed_steps"] == 5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
  "tx",
  [
    gen_optax.gen(optax.adam(1.0)),
    gen_optax.gen(optax.chain(optax.clip_by_global_norm(1e-3), optax.adam(1.0))),
    optax.chain(optax.identity(), gen_optax.gen(optax.sgd(1.0, momentum=0.9))),
    gen_optax.gen(optax.adam(1.0), refresh_every=3),
  ],
  ids=["gen", "clip inside", "gen last in a chain", "refresh every 3"],
)
def test_gen_last_is_never_flagged(tx, dtype):
  # Rounding of the params (bfloat16 included) and of the two sums stays
  # inside the tolerance: no false alarm over a run.
  state = _train_chain(tx, 12, dtype=dtype)
  assert int(state.info.num_changed_steps) == 0
  assert int(state.info.num_refreshes) >= 4
