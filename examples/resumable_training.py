"""Training that survives being killed: orbax CheckpointManager with async saves.

GeN-Adam (lookback, lazy refresh every 2 steps) trains an MLP on scikit-learn's
digits and saves parameters and optimizer state every ``--save-every`` steps
with ``orbax.checkpoint.CheckpointManager`` (saves run in the background while
training goes on).  Started again with the same ``--dir`` after any
interruption, even ``kill -9`` in the middle of a save, it resumes from the
last complete checkpoint (orbax finalises a checkpoint atomically, so a torn
one is never seen) and, since the batch of step t depends only on t, ends
bit-for-bit where an uninterrupted run ends (tested: tests/test_preemption.py).

Run: ``python examples/resumable_training.py --dir /tmp/run --steps 200``
(interrupt it, run it again).  Prints ``step N`` after each step and writes the
final parameters and state to ``--dir/final.npz``.
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from sklearn.datasets import load_digits

import gen_optax


def init_params(key: jax.Array) -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(key)
  return {
    "w1": jax.random.normal(k1, (64, 64)) / 8,
    "b1": jnp.zeros(64),
    "w2": jax.random.normal(k2, (64, 10)) / 8,
    "b2": jnp.zeros(10),
  }


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def batch_at(step: int, x: np.ndarray, y: np.ndarray, size: int):
  """The batch of step ``step``: a function of the step alone.

  A resumed run therefore sees the batches the uninterrupted one saw.
  """
  rows = np.random.default_rng(step).choice(len(x), size, replace=False)
  return x[rows], y[rows]


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", type=Path, required=True)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--save-every", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=64)
  args = parser.parse_args(argv)
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)

  tx = gen_optax.gen(optax.adam(1.0), refresh_every=2)
  params = init_params(jax.random.key(0))
  state = tx.init(params)

  @jax.jit
  def step(params, state, xb, yb):
    value, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
    updates, state = tx.update(
      grads, state, params, value_fn=lambda p: loss_fn(p, xb, yb)
    )
    return optax.apply_updates(params, updates), state, value

  manager = ocp.CheckpointManager(
    args.dir.resolve() / "checkpoints",
    options=ocp.CheckpointManagerOptions(
      save_interval_steps=args.save_every,
      max_to_keep=2,
      enable_async_checkpointing=True,
    ),
  )
  start = 0
  if (latest := manager.latest_step()) is not None:
    # Restore into the structure of a fresh state (GeNState, Adam's state).
    abstract = jax.eval_shape(lambda: {"params": params, "opt_state": state})
    restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    params, state, start = restored["params"], restored["opt_state"], latest
    print(f"resumed from step {latest}", flush=True)

  for t in range(start, args.steps):
    params, state, value = step(params, state, *batch_at(t, x, y, args.batch_size))
    # The checkpoint of step t + 1 holds the state after t + 1 updates.
    manager.save(
      t + 1, args=ocp.args.StandardSave({"params": params, "opt_state": state})
    )
    print(f"step {t + 1} loss {float(value):.4f}", flush=True)
  manager.wait_until_finished()
  manager.close()

  leaves = jax.tree_util.tree_flatten_with_path({"params": params, "opt_state": state})
  final = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves[0]}
  np.savez(args.dir / "final.npz", **final)
  print(f"done: α = {float(gen_optax.learning_rate(state)):.4g}", flush=True)
  return final


if __name__ == "__main__":
  main()
