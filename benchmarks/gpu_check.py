"""Accelerator check: GeN's jit and multi-device paths on whatever JAX finds.

Prints the devices; the GeN step time of each exact mode, with ``value_fn``
and fused with the gradient, as a ratio to the inner Adam step (MLP and
transformer of ``overhead.py``); and, on all devices
at once, a data-parallel ``jax.jit`` run and a ``shard_map`` run with
``axis_name``, with their α against the single-device α.  Runs on CPU too
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` gives 8 devices).

Run: ``python -m benchmarks.gpu_check`` (under 3 minutes).
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gen_optax
from benchmarks.models import TIMED_MODELS
from benchmarks.overhead import FUSED_MODES, configs_for, prepare, time_problem


def loss(params, x, y):
  return jnp.mean((jnp.tanh(x @ params["w"]) @ params["v"] - y) ** 2)


def data(n_devices: int, steps: int):
  x = jax.random.normal(jax.random.key(0), (steps, 2, 32 * n_devices, 64))
  return x, jnp.sin(x[..., 0])


def single_device_alpha(params, x, y, tx):
  state = tx.init(params)
  for t in range(x.shape[0]):
    grads = jax.grad(loss)(params, x[t, 0], y[t, 0])
    updates, state = tx.update(
      grads, state, params, value_fn=lambda p, t=t: loss(p, x[t, 1], y[t, 1])
    )
    params = optax.apply_updates(params, updates)
  return float(state.learning_rate)


def multi_device_check(steps: int = 5) -> None:
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("data",))
  params = {
    "w": jax.random.normal(jax.random.key(1), (64, 128)) / 8,
    "v": jax.random.normal(jax.random.key(2), (128,)) / 12,
  }
  x, y = data(n, steps)
  # No growth bounds, so that α is the measured one (what must agree).
  tx = gen_optax.gen(optax.adam(1.0), warmup_growth=None, max_growth=None)
  reference = single_device_alpha(params, x, y, tx)

  @jax.jit
  def step(p, s, xb, yb, xf, yf):
    grads = jax.grad(loss)(p, xb, yb)
    updates, s = tx.update(grads, s, p, value_fn=lambda q: loss(q, xf, yf))
    return optax.apply_updates(p, updates), s

  p = jax.device_put(params, NamedSharding(mesh, P()))
  s = tx.init(p)
  batch = NamedSharding(mesh, P("data"))
  start = time.perf_counter()
  for t in range(steps):
    args = jax.device_put((x[t, 0], y[t, 0], x[t, 1], y[t, 1]), batch)
    p, s = step(p, s, *args)
  jax.block_until_ready(p)
  print(
    f"jit, data-parallel on {n} device(s): alpha {float(s.learning_rate):.6g}"
    f" (single device {reference:.6g}, rel. diff"
    f" {abs(float(s.learning_rate) - reference) / reference:.1e},"
    f" {time.perf_counter() - start:.2f}s incl. compile)"
  )

  mapped = gen_optax.gen(
    optax.adam(1.0), axis_name="data", warmup_growth=None, max_growth=None
  )

  @jax.jit
  @functools.partial(
    jax.shard_map,
    mesh=mesh,
    in_specs=(P(), P(None, None, "data"), P(None, None, "data")),
    out_specs=(P("data"), P("data")),
  )
  def train(p, xs, ys):
    s = mapped.init(p)
    for t in range(steps):
      grads = jax.lax.pmean(jax.grad(loss)(p, xs[t, 0], ys[t, 0]), "data")
      updates, s = mapped.update(
        grads, s, p, value_fn=lambda q, t=t: loss(q, xs[t, 1], ys[t, 1])
      )
      p = optax.apply_updates(p, updates)
    return jax.tree.map(lambda a: a[None], p), s.learning_rate[None]

  sharded = NamedSharding(mesh, P(None, None, "data"))
  outputs = train(params, jax.device_put(x, sharded), jax.device_put(y, sharded))
  replicas, alphas = jax.tree.map(np.asarray, outputs)
  identical = all(
    np.array_equal(leaf[0], leaf[i])
    for leaf in jax.tree.leaves(replicas)
    for i in range(n)
  )
  print(
    f"shard_map with axis_name on {n} device(s): alpha {alphas[0]:.6g},"
    f" replicas bit-identical: {identical}"
  )


def main() -> None:
  for device in jax.devices():
    print(f"device: {device} ({device.device_kind})")
  print(f"jax {jax.__version__}, optax {optax.__version__}")
  multi_device_check()
  configs = configs_for(list(FUSED_MODES), [1], [4], list(FUSED_MODES))
  print(
    f"{'model':12s} {'method':33s} {'k':>3} {'ms/step':>9} {'ratio':>6}"
    f" {'mem MB':>9} {'mem x':>6}"
  )
  for name in ("mlp", "transformer"):
    problem = TIMED_MODELS[name]()
    params = problem.init(jax.random.key(0))
    time_problem(problem, configs, prepare(problem, params, configs), rounds=3)


if __name__ == "__main__":
  main()
