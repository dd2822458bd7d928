"""Screens settings of ``gen`` on quality.py's problems against the saved grids.

Trains GeN around the chosen inner optimizers with the given ``gen`` keyword
arguments on the problems of ``quality.py`` (same data, batches and seeds) and
prints each final training loss over the best grid's in
``benchmarks/results/quality.json`` (AdamW's grid for GeN-AdamW, SGD-momentum's
for the SGD inners), the per-seed losses and α at steps 100, 200 and the end.
This is how the rows of the rule table in ``docs/method.md`` were screened.

Run: ``python benchmarks/gen_settings.py --settings '{"smoothing": 0.95}'``;
a number for ``multiplier`` stands for a constant schedule.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import optax
import quality

import gen_optax

# Each inner of quality.GEN_INNERS is compared with this grid's best rate.
GRID_OF = {
  "adamw": "AdamW grid",
  "sgd-momentum": "SGD-momentum grid",
  "sgd": "SGD-momentum grid",
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", type=json.loads, default={}, help="gen kwargs")
  parser.add_argument("--inners", nargs="+", default=["adamw"], choices=GRID_OF)
  parser.add_argument("--problems", nargs="+", default=list(quality.PROBLEMS))
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument(
    "--grids", type=Path, default=Path(__file__).parent / "results" / "quality.json"
  )
  args = parser.parse_args()
  if args.quick:
    args.steps, args.seeds, args.problems = 3, 1, ["convex", "mlp"]
  saved = json.loads(args.grids.read_text())
  best = {(r["problem"], r["family"]): r["final_loss"] for r in saved["rows"]}
  print(f"gen settings: {args.settings or 'defaults'}")
  if isinstance(args.settings.get("multiplier"), (int, float)):
    # A number in JSON stands for a constant multiplier schedule.
    args.settings["multiplier"] = optax.constant_schedule(args.settings["multiplier"])
  for name in args.problems:
    problem = quality.PROBLEMS[name]()
    for inner_name in args.inners:
      grid = GRID_OF[inner_name]
      tx = gen_optax.gen(quality.GEN_INNERS[inner_name](), **args.settings)
      method = quality.Method(
        inner_name, lambda lr, tx=tx: tx, "gen", needs_value_fn=True
      )
      run = quality.train(problem, method, args.steps, args.seeds)
      final, rates = run["final"][:, 0], run["lr_trace"][:, 0]
      at = [min(s, args.steps) - 1 for s in (100, 200, args.steps)]
      print(
        f"{name:7s} GeN-{inner_name:13s} loss {final.mean():.4g}"
        f"  / best {grid}: {final.mean() / best[(name, grid)]:.3g}"
        f"  seeds {np.array2string(final, precision=3)}"
        f"  median α at steps {[s + 1 for s in at]}:"
        f" {[float(f'{np.median(rates[:, s]):.3g}') for s in at]}",
        flush=True,
      )


if __name__ == "__main__":
  main()
