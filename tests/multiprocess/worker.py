"""One process of a data-parallel GeN run over a global mesh of 8 CPU devices.

Started by ``tests/test_multiprocess.py``: either alone with 8 local devices
(the reference), or as one of 2 processes × 4 devices that meet through
``jax.distributed.initialize`` on localhost (gloo CPU collectives).  The code
is the same in both cases; only the processes differ.  Each run writes the
global parameters, GeN's α and stored direction, and the compiled step's
per-device memory to ``--out`` (process 0 only).

Usage: ``python worker.py --out F --layout {replicated,fsdp}
[--process-id I --num-processes N --coordinator HOST:PORT]``.
"""

import argparse
import json
from pathlib import Path

import jax

STEPS, REFRESH_EVERY, BATCH = 12, 3, 64


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, required=True)
  parser.add_argument("--layout", choices=("replicated", "fsdp"), required=True)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--coordinator", default=None)
  args = parser.parse_args()
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  # Imported after initialize: nothing may touch the backend before it.
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import gen_optax

  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("data",))
  jax.set_mesh(mesh)  # jit under explicit sharding places its outputs on it
  rng = np.random.default_rng(0)
  # Every process draws the same global arrays; each keeps the shards of its
  # own devices (make_array_from_callback asks only for those).
  host_params = {
    "w": rng.normal(size=(16, 32)).astype(np.float32) / 4,
    "v": rng.normal(size=(32,)).astype(np.float32) / 8,
  }
  xs = rng.normal(size=(STEPS, BATCH, 16)).astype(np.float32)
  ys = np.tanh(xs @ np.linspace(-1.0, 1.0, 16, dtype=np.float32))

  def global_array(host, spec):
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

  # FSDP: each device holds 1/8 of every parameter (first axis), and GeN's
  # stored step is laid out the same way; data parallel: replicated params.
  param_specs = {
    "replicated": {"w": P(), "v": P()},
    "fsdp": {"w": P("data", None), "v": P("data")},
  }[args.layout]
  params = jax.tree.map(global_array, host_params, param_specs)

  def loss(p, x, y):
    # FSDP gathers each parameter for the forward pass (its gradient is then
    # reduce-scattered back to the parameter's layout); a no-op if replicated.
    p = jax.tree.map(lambda a: jax.sharding.reshard(a, P()), p)
    return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2)

  # Lookback (the default measure_along="previous_step") with a lazy refresh
  # every 3 steps; no growth bounds, so α comes from the measurements.
  tx = gen_optax.gen(
    optax.adam(1.0), refresh_every=REFRESH_EVERY, warmup_growth=None, max_growth=None
  )
  state = jax.jit(tx.init)(params)

  @jax.jit
  def step(p, s, x, y):
    value, grads = jax.value_and_grad(loss)(p, x, y)
    updates, s = tx.update(grads, s, p, value_fn=lambda q: loss(q, x, y))
    return optax.apply_updates(p, updates), s, value

  batch = P("data")
  x0, y0 = global_array(xs[0], batch), global_array(ys[0], batch)
  memory = step.lower(params, state, x0, y0).compile().memory_analysis()
  losses = []
  for t in range(STEPS):
    x, y = global_array(xs[t], batch), global_array(ys[t], batch)
    params, state, value = step(params, state, x, y)
    losses.append(value)

  layouts_match = all(
    d.sharding.is_equivalent_to(p.sharding, p.ndim)
    for d, p in zip(
      jax.tree.leaves(state.previous_step), jax.tree.leaves(params), strict=True
    )
  )
  gather = lambda tree: jax.tree.map(  # noqa: E731
    lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)).tolist(),
    tree,
  )
  result = {
    "process_count": jax.process_count(),
    "local_devices": jax.local_device_count(),
    "params": gather(params),
    "previous_step": gather(state.previous_step),
    "learning_rate": float(gather(state.learning_rate)),
    "num_accepted": int(gather(state.rule.num_accepted)),
    "losses": [float(gather(v)) for v in losses],
    "step_shards_like_params": layouts_match,
    # Per device: what the compiled step takes in (params, state, batch), and
    # the optimizer state's own shard.
    "argument_bytes_per_device": int(memory.argument_size_in_bytes),
    "state_bytes_per_device": sum(
      leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(state)
    ),
  }
  if jax.process_index() == 0:
    args.out.write_text(json.dumps(result))
  multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
  main()
