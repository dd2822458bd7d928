"""gen's reactions when its steps hurt, seen from the update it returns.

The rule's arithmetic is checked in test_rule.py; here the plumbing: what a
loss spike does to the returned step and the inner state, the bound on a
burst of the inner update, the horizon, and the optax harness's divergence
case that the rule before could not stop.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import quadratic, spd_matrix

import gen_optax
from gen_optax import Status

A, B = spd_matrix(4, seed=2, condition=10.0), np.arange(1.0, 5.0)
LOSS = quadratic(A, B)


def _steps(tx, losses, params, grads_of=None):
  """Updates gen with one value_fn per step at moving params; returns records."""
  state, records = tx.init(params), []
  for loss in losses:
    grads = jax.grad(grads_of or loss)(params)
    updates, new_state = tx.update(grads, state, params, value_fn=loss)
    records.append((params, state, updates, new_state))
    params, state = optax.apply_updates(params, updates), new_state
  return records


@pytest.mark.parametrize("measure_along", ["previous_step", "current_update"])
def test_a_loss_spike_takes_the_step_back_and_skips_the_inner_update(
  x64, measure_along
):
  # Six ordinary steps, then a batch whose loss is 1e3 above every other.
  spiked = lambda p: LOSS(p) + 1e3  # noqa: E731  (same gradient and curvature)
  tx = gen_optax.gen(optax.adam(1.0), measure_along=measure_along)
  records = _steps(tx, [LOSS] * 6 + [spiked], jnp.zeros(4), grads_of=LOSS)
  assert [int(r[3].info.status) for r in records[1:6]] == [Status.ACCEPTED] * 5
  _, before, updates, after = records[-1]
  assert int(after.info.status) == Status.LOSS_SPIKE
  np.testing.assert_allclose(after.learning_rate, before.learning_rate / 2)
  # The inner optimizer did not see the spike's gradient.
  jax.tree.map(np.testing.assert_array_equal, after.inner_state, before.inner_state)
  if measure_along == "previous_step":
    # Back to where the last step started; nothing left to measure along.
    np.testing.assert_allclose(updates, -before.previous_step, rtol=1e-12)
    assert not np.any(after.previous_step)
  else:
    assert not np.any(updates)


def test_after_a_spike_the_next_refresh_keeps_the_cut_rate(x64):
  spiked = lambda p: LOSS(p) + 1e3  # noqa: E731
  tx = gen_optax.gen(optax.adam(1.0))
  records = _steps(tx, [LOSS] * 6 + [spiked, LOSS], jnp.zeros(4), grads_of=LOSS)
  after_spike, next_state = records[-2][3], records[-1][3]
  assert int(next_state.info.status) == Status.ZERO_DIRECTION
  assert next_state.learning_rate == after_spike.learning_rate


def test_no_trust_ratio_means_no_spike_reaction(x64):
  spiked = lambda p: LOSS(p) + 1e3  # noqa: E731
  tx = gen_optax.gen(optax.adam(1.0), trust_ratio=None)
  records = _steps(tx, [LOSS] * 6 + [spiked], jnp.zeros(4), grads_of=LOSS)
  params, before, updates, after = records[-1]
  assert int(after.info.status) == Status.ACCEPTED
  inner, _ = optax.adam(1.0).update(jax.grad(LOSS)(params), before.inner_state)
  np.testing.assert_allclose(updates, after.learning_rate * inner, rtol=1e-12)


def test_a_burst_of_the_inner_update_is_bounded_by_the_trust_ratio(x64):
  """The inner update grows 10x in one step (a schedule of its scale): that
  step is ρ = 2 times the update α was measured for, not 10 times."""
  scales = jnp.asarray([1.0] * 6 + [10.0] * 4)
  inner = optax.chain(optax.sgd(1.0), optax.scale_by_schedule(lambda t: scales[t]))
  tx = gen_optax.gen(inner, warmup_growth=None)
  with pytest.warns(UserWarning, match="schedule is cancelled"):  # on purpose here
    records = _steps(tx, [LOSS] * 8, jnp.full(4, 3.0))
  norm = lambda t: float(scales[t] * jnp.linalg.norm(jax.grad(LOSS)(records[t][0])))  # noqa: E731
  for t in range(2, 8):
    step = float(jnp.linalg.norm(records[t][2]))
    alpha = float(records[t][3].learning_rate)
    if t == 6:  # the burst: ρ times the previous update's length
      np.testing.assert_allclose(step, alpha * 2.0 * norm(5), rtol=1e-10)
    else:  # the updates' lengths change by less than ρ: no cut
      np.testing.assert_allclose(step, alpha * norm(t), rtol=1e-10)


def test_total_steps_decays_the_peak_rate_by_a_cosine(x64):
  steps = 12
  tx = gen_optax.gen(optax.adam(1.0), total_steps=steps)
  params, state = jnp.zeros(4), tx.init(jnp.zeros(4))
  for t in range(steps + 2):
    grads = jax.grad(LOSS)(params)
    inner_update, _ = optax.adam(1.0).update(grads, state.inner_state, params)
    updates, new_state = tx.update(grads, state, params, value_fn=LOSS)
    shape = 0.5 * (1 + np.cos(np.pi * min(t, steps) / steps))
    np.testing.assert_allclose(
      updates, new_state.rule.peak_rate * shape * inner_update, rtol=1e-9, atol=1e-15
    )
    params, state = optax.apply_updates(params, updates), new_state
  assert not np.any(updates)  # past the horizon the step is zero


def test_sgd_on_rosenbrock_no_longer_diverges():
  """optax's harness: gen(sgd) on Rosenbrock from (0, 0) went to NaN (the
  warm-up took α to 12.8x 2/λmax by step 23 and the rule only kept α)."""
  loss = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2  # noqa: E731
  tx = gen_optax.gen(optax.sgd(1.0))

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
    return (optax.apply_updates(params, updates), state), loss(params)

  (params, _), losses = jax.jit(
    lambda p: jax.lax.scan(step, (p, tx.init(p)), length=3000)
  )(jnp.zeros(2))
  assert bool(jnp.all(jnp.isfinite(losses)))
  assert float(loss(params)) < 1e-3


def test_status_prints_its_name():
  assert str(Status.LOSS_SPIKE) == "LOSS_SPIKE"
  assert f"{Status(0)}" == "ACCEPTED"
