"""The multiplier m(t) scales the applied step and is never absorbed into α.

Every test here moves the params: the previous-step measurement sees the step
m₋α₋u₋ that was really taken, so a test at a fixed point cannot tell whether
α absorbed the multiplier (α̂ ∝ 1/m₋ when it does).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ALL_MODES, quadratic, spd_matrix, wide_open

import gen_optax

# Along the previous step, with no smoothing and no bounds: α is the last
# measurement's estimate, the best rate along the previous update u₋.
LOOKBACK = wide_open(measure_along="previous_step")


def train(
  tx: optax.GradientTransformationExtraArgs,
  loss: Callable[[Any], jax.Array],
  params: jax.Array,
  steps: int,
  *,
  fused: bool = False,
  refresh_every: int | None = None,
) -> list[tuple[jax.Array, jax.Array, Any]]:
  """(params, grads, state after the update) of every step, jitted.

  ``fused`` measures with ``gen_optax.value_and_grad``; ``refresh_every``
  passes the static ``refresh`` flag (two compiled steps, no ``lax.cond``).
  """

  @jax.jit
  def plain(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, value_fn=loss)
    return optax.apply_updates(params, updates), grads, state

  def static(refresh: bool):
    @jax.jit
    def step(params, state):
      if fused:
        (_, grads), line = gen_optax.value_and_grad(lambda p: loss(p), refresh=refresh)(
          params, state
        )
        updates, state = tx.update(grads, state, params, line=line, refresh=refresh)
      else:
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params, value_fn=loss, refresh=refresh)
      return optax.apply_updates(params, updates), grads, state

    return step

  steps_by_flag = {flag: static(flag) for flag in (True, False)}
  state, history = tx.init(params), []
  for t in range(steps):
    if refresh_every is None and not fused:
      new_params, grads, state = plain(params, state)
    else:
      every = refresh_every or 1
      new_params, grads, state = steps_by_flag[t % every == 0](params, state)
    history.append((params, grads, state))
    params = new_params
  return history


def barzilai_borwein(history, t: int) -> float:
  """‖Δθ‖² / ⟨Δθ, Δg⟩ of the step from history[t − 1] to history[t]."""
  (p0, g0, _), (p1, g1, _) = history[t - 1], history[t]
  dp, dg = np.asarray(p1 - p0), np.asarray(g1 - g0)
  return float(dp @ dp / (dp @ dg))


QUADRATIC = quadratic(spd_matrix(5, seed=3, condition=20.0), np.arange(1.0, 6.0))


@pytest.mark.parametrize("multiplier", [0.5, 0.1, 3.0])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_alpha_is_the_barzilai_borwein_step_whatever_the_multiplier(
  x64, mode, multiplier
):
  """SGD on a quadratic: the refresh at step t measures the step t−1 → t,
  and α is its BB step ‖Δθ‖²/⟨Δθ, Δg⟩, which does not depend on m (it
  depends only on the step's direction). Were m absorbed, α would be BB/m."""
  tx = gen_optax.gen(optax.sgd(1.0), mode=mode, multiplier=multiplier, **LOOKBACK)
  history = train(tx, QUADRATIC, jnp.zeros(5), 7)
  for t in range(2, 6):
    # The state after update t holds the α measured along step t−1 → t ...
    alpha = history[t][2].learning_rate
    np.testing.assert_allclose(alpha, barzilai_borwein(history, t), rtol=1e-8)
    # ... and the step taken with it is m·α·u = −m·α·g.
    (theta, g, _), (theta_next, _, _) = history[t], history[t + 1]
    np.testing.assert_allclose(theta_next - theta, -multiplier * alpha * g, rtol=1e-10)


@pytest.mark.parametrize(
  ("fused", "refresh_every", "lazy"),
  [
    (True, None, None),  # the measurement made with the gradient
    (False, None, 3),  # lazy refresh through lax.cond
    (False, 3, None),  # lazy refresh through the static flag
    (True, 3, None),  # both
  ],
  ids=["fused", "lazy-cond", "lazy-static", "fused-lazy-static"],
)
def test_multiplier_is_not_absorbed_fused_and_lazy(x64, fused, refresh_every, lazy):
  settings = dict(LOOKBACK, refresh_every=lazy) if lazy else LOOKBACK
  tx = gen_optax.gen(optax.sgd(1.0), multiplier=0.25, **settings)
  history = train(
    tx, QUADRATIC, jnp.zeros(5), 10, fused=fused, refresh_every=refresh_every
  )
  every = lazy or refresh_every or 1
  refreshes = [t for t in range(1, 10) if t % every == 0]
  assert len(refreshes) >= 3
  for t in refreshes:
    np.testing.assert_allclose(
      history[t][2].learning_rate, barzilai_borwein(history, t), rtol=1e-8
    )
    # Between refreshes α is kept.
    for s in range(t + 1, min(t + every, 10)):
      assert history[s][2].learning_rate == history[t][2].learning_rate


def test_injected_multiplier_is_not_absorbed(x64):
  """Under inject_hyperparams the multiplier is a traced number, changed
  between steps by the caller: α is still the BB step."""
  tx = optax.inject_hyperparams(gen_optax.gen, static_args=("refresh_every",))(
    inner=optax.sgd(1.0), multiplier=1.0, **LOOKBACK
  )
  params, state, history = jnp.zeros(5), tx.init(jnp.zeros(5)), []
  step = jax.jit(
    lambda p, s: tx.update(jax.grad(QUADRATIC)(p), s, p, value_fn=QUADRATIC)
  )
  for t in range(6):
    state.hyperparams["multiplier"] = jnp.asarray(0.2 + 0.3 * t)
    grads = jax.grad(QUADRATIC)(params)
    updates, state = step(params, state)
    history.append((params, grads, state))
    params = optax.apply_updates(params, updates)
  for t in range(2, 6):
    alpha = gen_optax.learning_rate(history[t][2])
    np.testing.assert_allclose(alpha, barzilai_borwein(history, t), rtol=1e-8)


def test_multiplier_is_not_absorbed_under_multi_steps(x64):
  """Two equal micro-batches per update: gen sees the full gradient every
  second call, and its α is the BB step of the emitted steps."""
  tx = gen_optax.multi_steps(
    gen_optax.gen(optax.sgd(1.0), multiplier=0.5, **LOOKBACK), every_k=2
  )
  history = train(tx, QUADRATIC, jnp.zeros(5), 12)
  # Cycle k starts at θ_k (its gradient is the full one); its emitting call
  # 2k + 1 refreshes along θ_{k−1} → θ_k.
  cycles = history[::2]
  for k in range(2, 6):
    alpha = gen_optax.learning_rate(history[2 * k + 1][2])
    np.testing.assert_allclose(alpha, barzilai_borwein(cycles, k), rtol=1e-8)


def test_schedule_scales_the_step_and_alpha_keeps_its_meaning_on_a_noisy_problem(x64):
  """Minibatch least squares over 60 steps with a cosine multiplier.

  Independently of gen: on batch B the best rate along u from θ is
  −∇L_B(θ)·u / (uᵀ X_Bᵀ X_B u / n).  After each refresh α must be that rate
  for the previous update u₋ = Δθ / (m₋ α₋), from the previous point, on the
  current batch; and the step taken must be m(t)·α·u with u the SGD update.
  """
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 6)) * np.geomspace(0.3, 3.0, 6)
  y = x @ rng.normal(size=6) + 0.5 * rng.normal(size=256)
  batches = [rng.choice(256, 16, replace=False) for _ in range(60)]
  steps = len(batches)
  schedule = optax.cosine_decay_schedule(1.0, steps, alpha=0.05)

  def loss(theta, rows):
    residual = jnp.asarray(x)[rows] @ theta - jnp.asarray(y)[rows]
    return 0.5 * jnp.mean(residual**2)

  tx = gen_optax.gen(optax.sgd(1.0), multiplier=schedule, **LOOKBACK)

  @jax.jit
  def step(theta, state, rows):
    grads = jax.grad(loss)(theta, rows)
    updates, state = tx.update(grads, state, theta, value_fn=lambda p: loss(p, rows))
    return optax.apply_updates(theta, updates), state, updates, grads

  theta, state = jnp.zeros(6), tx.init(jnp.zeros(6))
  previous, previous_alpha, accepted = None, None, 0  # previous: (θ₋, u₋)
  for t, rows in enumerate(batches):
    new_theta, state, updates, grads = step(theta, state, rows)
    alpha = float(state.learning_rate)
    if previous is not None:
      theta_prev, u_prev = previous
      xb = x[rows]
      g_prev = xb.T @ (xb @ np.asarray(theta_prev) - y[rows]) / len(rows)
      best = -(g_prev @ u_prev) / (u_prev @ xb.T @ xb @ u_prev / len(rows))
      if best > 0:
        np.testing.assert_allclose(alpha, best, rtol=1e-8)
        accepted += 1
      else:  # uphill on this batch: α is kept
        assert state.info.status == gen_optax.Status.NOT_DESCENT
        assert alpha == previous_alpha
    # optax schedules compute in float32.
    np.testing.assert_allclose(
      updates, -float(schedule(t)) * alpha * np.asarray(grads), rtol=1e-6
    )
    previous, previous_alpha = (theta, -np.asarray(grads)), alpha
    theta = new_theta
  assert accepted >= steps // 2
