"""What the loss-spike reaction costs a step that refreshes α every step.

On a loss spike gen restores the inner optimizer's state from before the
step and returns the step back (``-d``).  Both are selects on a flag that
only the measurement knows, so XLA keeps the old inner state and the stored
step alive until the end of the step and reads them once more, on every
refreshing step, spike or not.  This times GeN-Adam with the defaults against
the same GeN without the reactions (``trust_ratio=None``: the bare greedy
step, which also drops the bound on a burst of the inner update, one norm of
the update, and the rule's scalar reactions), in the interleaved rounds of
``benchmarks.overhead``, with the compiled memory.

Run: ``python -m benchmarks.studies.spike_reaction_cost --out
benchmarks/results/study-spike-reaction-cost.json`` (about five minutes on
the 2-core CPU).
"""

import argparse
import json
from pathlib import Path

import jax
import optax

import gen_optax
from benchmarks import overhead
from benchmarks.models import TIMED_MODELS


def configs() -> list[overhead.Config]:
  """The inner step, and GeN refreshing every step with and without the reaction."""
  return [
    overhead.INNER,
    overhead.Config("gen auto", 1, False, gen_optax.gen(optax.adam(1.0))),
    overhead.Config(
      "gen auto, trust_ratio=None",
      1,
      False,
      gen_optax.gen(optax.adam(1.0), trust_ratio=None),
    ),
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--models", nargs="+", default=list(TIMED_MODELS), choices=TIMED_MODELS
  )
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--out", type=Path, default=None)
  args = parser.parse_args()
  timed = configs()
  problems = overhead.prepare_models(args.models, timed)
  runs = [
    overhead.time_run(problems, timed, args.rounds, f"run {run + 1}/{args.runs}")
    for run in range(args.runs)
  ]
  if args.out:
    command = "python -m benchmarks.studies.spike_reaction_cost --out " + str(args.out)
    if args.models != list(TIMED_MODELS):
      command += " --models " + " ".join(args.models)
    meta = {"command": command, "jax": jax.__version__, "rounds": args.rounds}
    result = {**meta, "rows": overhead.summarize(runs), "runs": runs}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
  main()
