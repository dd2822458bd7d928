"""A long run with injected faults: GeN under ``optax.apply_if_finite``.

GeN-AdamW (bfloat16 parameters, lookback, lazy refresh every 4 steps, its
defaults otherwise) trains an MLP on scikit-learn's digits for ``--steps``
steps.  At random steps (seeded) a batch is corrupted:

* ``nan`` / ``inf``: one input is NaN / infinite, so loss and gradient are;
  ``apply_if_finite`` must skip the step (GeN's state untouched);
* ``spike``: inputs scaled by 30 and labels shuffled, a finite loss spike;
* ``zero``: every example masked out (an all-padding batch): loss 0,
  gradient 0, slope 0 and curvature 0 along any direction.

The spike and zero faults fall on refresh steps, where GeN measures the loss
(between refreshes it does not look at it).  The same run without faults,
on the same clean batches, is the reference.  The run must finish with no
NaN in parameters or state, α within its bounds and back near the clean
run's α, and every fault recorded: NaN/inf in ``apply_if_finite``'s counters,
spike and zero in ``GeNInfo`` (its loss, slope and curvature).

Run: ``python -m benchmarks.soak --steps 3000 --out
benchmarks/results/soak.json`` (under a minute on 2 cores).
``tests/test_soak.py`` runs a short version.
"""

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gen_optax
from benchmarks import digits

KINDS = ("nan", "inf", "spike", "zero")
REFRESH_EVERY, BATCH = 4, 64
MIN_LR, MAX_LR = 1e-6, 1.0  # gen's defaults, checked against


# The shared digits MLP, 64 tanh units, bfloat16, the loss masked.
_loss = functools.partial(digits.loss, activation=jnp.tanh)


def fault_schedule(
  steps: int, per_kind: int, seed: int, kinds: tuple[str, ...] = KINDS
) -> dict[int, str]:
  """``per_kind`` faults of each kind at distinct random steps in [20, steps − 20).

  ``run`` delays a spike or zero fault to the next refresh step.
  """
  rng = np.random.default_rng(seed)
  # Multiples of the refresh period, so that two faults never merge into one
  # when a spike or zero waits for a refresh step.
  candidates = [t for t in range(20, steps - 20) if t % REFRESH_EVERY == 0]
  spread = rng.choice(candidates, len(kinds) * per_kind, replace=False)
  planned = [k for k in kinds for _ in range(per_kind)]
  return {int(t): kind for t, kind in zip(spread, planned, strict=True)}


def _batch(t: int, x: np.ndarray, y: np.ndarray, kind: str | None):
  rng = np.random.default_rng(t)
  rows = rng.choice(len(x), BATCH, replace=False)
  xb, yb, mask = x[rows].copy(), y[rows].copy(), np.ones(BATCH, np.float32)
  if kind == "nan":
    xb[0, 0] = np.nan
  elif kind == "inf":
    xb[0, 0] = np.inf
  elif kind == "spike":
    xb *= 30.0
    yb = rng.permutation(yb)
  elif kind == "zero":
    mask[:] = 0.0
  return xb, yb, mask


@functools.cache
def _training_step(clip: float | None):
  """(tx, jitted step) for one setting, built once.

  Runs with the same setting share one compilation.
  """
  inner = optax.adamw(1.0, weight_decay=1e-4)
  if clip is not None:
    inner = optax.chain(optax.clip_by_global_norm(clip), inner)
  tx = optax.apply_if_finite(
    gen_optax.gen(inner, refresh_every=REFRESH_EVERY), max_consecutive_errors=5
  )
  return tx, digits.train_step(tx, _loss)


def run(
  steps: int,
  per_kind: int,
  seed: int = 0,
  kinds: tuple[str, ...] = KINDS,
  clip: float | None = None,
) -> dict[str, Any]:
  """Trains for ``steps`` steps with ``per_kind`` faults of each of ``kinds``.

  No kinds: the clean reference.  ``clip``: the gradient is clipped to this
  global norm before AdamW (inside gen).  Returns per-step records and the
  final parameters and state.
  """
  x, y = digits.load()
  schedule = fault_schedule(steps, per_kind, seed, kinds)
  tx, step = _training_step(clip)
  params = digits.init(jax.random.key(seed), 64, jnp.bfloat16)
  state = tx.init(params)

  records: dict[str, list] = {
    k: [] for k in ("loss", "alpha", "count", "notfinite", "info_loss", "status")
  }
  injected: list[dict[str, Any]] = []
  pending = sorted(schedule.items())
  for t in range(steps):
    gen_state = gen_optax.find_state(state)
    kind = None
    if pending and t >= pending[0][0]:
      # spike/zero wait for a refresh step of GeN's own count (which lags the
      # step index by the skipped NaN/inf steps).
      wants_refresh = pending[0][1] in ("spike", "zero")
      if not wants_refresh or int(gen_state.count) % REFRESH_EVERY == 0:
        kind = pending.pop(0)[1]
    params, state, value = step(params, state, _batch(t, x, y, kind))
    gen_state = gen_optax.find_state(state)
    info = gen_state.info
    records["loss"].append(float(value))
    records["alpha"].append(float(gen_state.learning_rate))
    records["count"].append(int(gen_state.count))
    records["notfinite"].append(int(state.total_notfinite))
    records["info_loss"].append(float(info.loss))
    records["status"].append(int(info.status))
    if kind is not None:
      injected.append(
        {
          "step": t,
          "kind": kind,
          "slope": float(info.slope),
          "curvature": float(info.curvature),
        }
      )
  full = jnp.asarray(x), jnp.asarray(y), jnp.ones(len(x))
  return {
    "steps": steps,
    "faults": injected,
    "records": records,
    "final_loss": float(_loss(params, full)),
    "params": params,
    "state": state,
  }


def _finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def summarize(faulty: dict[str, Any], clean: dict[str, Any]) -> dict[str, Any]:
  """What the run must show, as numbers and booleans (saved and rendered)."""
  rec, ref = faulty["records"], clean["records"]
  alpha = np.asarray(rec["alpha"])
  tail = slice(-len(alpha) // 10, None)  # the last 10% of the steps
  gen_state = gen_optax.find_state(faulty["state"])
  by_kind = {k: [f for f in faulty["faults"] if f["kind"] == k] for k in KINDS}
  steps_of = {k: [f["step"] for f in by_kind[k]] for k in KINDS}
  skipped = len(steps_of["nan"]) + len(steps_of["inf"])
  notfinite = np.diff([0, *rec["notfinite"]])
  fault_steps = {f["step"] for f in faulty["faults"]}
  typical_loss = float(
    np.median([v for t, v in enumerate(rec["loss"]) if t not in fault_steps])
  )
  return {
    "steps": faulty["steps"],
    "faults": {k: len(v) for k, v in by_kind.items()},
    "params_and_state_finite": _finite(faulty["params"])
    and _finite((gen_state.rule, gen_state.previous_step, gen_state.inner_state)),
    "alpha_min": float(alpha.min()),
    "alpha_max": float(alpha.max()),
    "alpha_in_bounds": bool(MIN_LR <= alpha.min() and alpha.max() <= MAX_LR),
    # Recovery: over the last 10% of the steps α is close to the clean run's.
    "alpha_tail_over_clean": float(
      np.median(alpha[tail]) / np.median(np.asarray(ref["alpha"])[tail])
    ),
    "final_loss": faulty["final_loss"],
    "clean_final_loss": clean["final_loss"],
    "final_loss_over_clean": faulty["final_loss"] / clean["final_loss"],
    # Not stuck: over the last 10% of the steps α stays off its lower bound.
    "alpha_tail_min": float(alpha[tail].min()),
    # NaN/inf: counted by apply_if_finite exactly at those steps; GeN skipped.
    "nonfinite_counted_at_fault_steps": sorted(np.flatnonzero(notfinite).tolist())
    == sorted(steps_of["nan"] + steps_of["inf"]),
    "gen_count_skipped": faulty["steps"] - int(gen_state.count) == skipped,
    # Spike: GeNInfo's loss at the fault is far above the typical loss, and
    # above every batch loss of the clean run; the rule flagged it.
    "spike_loss_over_median": min(
      (rec["info_loss"][t] / typical_loss for t in steps_of["spike"]),
      default=None,
    ),
    "spike_loss_over_clean_max": min(
      (rec["info_loss"][t] / max(ref["loss"]) for t in steps_of["spike"]),
      default=None,
    ),
    "spike_flagged": all(
      rec["status"][t] == gen_optax.Status.LOSS_SPIKE for t in steps_of["spike"]
    ),
    # Zero: GeNInfo shows the flat line (loss, slope, curvature exactly 0).
    "zero_recorded": all(
      rec["info_loss"][f["step"]] == 0.0 and f["slope"] == 0.0 and f["curvature"] == 0.0
      for f in by_kind["zero"]
    ),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--per-kind", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=Path, default=None)
  args = parser.parse_args()
  clean = run(args.steps, args.per_kind, args.seed, kinds=())
  results: dict[str, Any] = {"steps": args.steps, "seed": args.seed, "runs": {}}
  # Every kind; every kind but the spike, the one fault that reaches the
  # inner optimizer (a finite 30x gradient enters Adam's moments).
  # And every kind with the gradient clipped (global norm 1) before AdamW,
  # against a clean run clipped the same way.
  clean_clipped = run(args.steps, args.per_kind, args.seed, kinds=(), clip=1.0)
  variants = (
    ("all faults", KINDS, None, clean),
    ("no spike", ("nan", "inf", "zero"), None, clean),
    ("all faults, gradient clipped to norm 1", KINDS, 1.0, clean_clipped),
  )
  for name, kinds, clip, reference in variants:
    faulty = run(args.steps, args.per_kind, args.seed, kinds=kinds, clip=clip)
    summary = summarize(faulty, reference)
    results["runs"][name] = {"summary": summary, "faults": faulty["faults"]}
    print(f"--- {name}")
    for key, value in summary.items():
      print(f"{key:34s} {value}")
  if args.out:
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
