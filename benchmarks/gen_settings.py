"""Screens settings of ``gen`` on one half of the quality benchmark against saved grids.

Leave-out validation: a change of a default is screened on the *selection*
half (``--split select``, the default) and, once chosen, reported on both
halves (``--split all``).  The *report* half is never used to choose.

Trains GeN around the chosen inner optimizers, in the chosen loops, with the
given ``gen`` keyword arguments on the problems of ``quality.py`` (same data,
batches and seeds) and prints each final training loss over the best
constant and the best warm-up + cosine rate of the same inner optimizer saved in
``benchmarks/results/quality.json``, then the worst and median ratios.
``--out FILE`` saves every row as JSON (screens quoted in docs/method.md are
saved under ``benchmarks/results/screens/``).

Run: ``python -m benchmarks.gen_settings --settings '{"smoothing": 0.95}'``;
a number for ``multiplier`` stands for a constant schedule, ``"cosine"``
for a cosine decay over the run, and ``"total_steps": "run"`` for each
problem's own length.  ``--rule`` overrides constants of the rule module
(``gen_optax/_src/rule.py``) for a screen.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import optax

from benchmarks import quality
from benchmarks.quality_problems import QUALITY_PROBLEMS, SPLIT
from gen_optax._src import gen as gen_lib
from gen_optax._src import rule as rule_lib


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", type=json.loads, default={}, help="gen kwargs")
  parser.add_argument(
    "--rule",
    type=json.loads,
    default={},
    help="constants of gen_optax._src.rule to screen, e.g. '{\"FAST_WINDOW\": 20}'",
  )
  parser.add_argument(
    "--inners", nargs="+", default=list(quality.INNERS), choices=quality.GEN_INNERS
  )
  parser.add_argument(
    "--loops", nargs="+", default=list(quality.LOOPS), choices=quality.LOOPS
  )
  parser.add_argument("--split", choices=[*SPLIT, "all"], default="select")
  parser.add_argument("--problems", nargs="+", default=None, choices=QUALITY_PROBLEMS)
  parser.add_argument(
    "--seeds", type=int, default=None, help="default: as quality.py (3, 5 if long)"
  )
  parser.add_argument(
    "--steps", type=int, default=None, help="override every problem's"
  )
  parser.add_argument(
    "--grids", type=Path, default=Path(__file__).parent / "results" / "quality.json"
  )
  parser.add_argument("--out", type=Path, default=None, help="save the rows as JSON")
  args = parser.parse_args()
  names = args.problems or (
    list(QUALITY_PROBLEMS) if args.split == "all" else list(SPLIT[args.split])
  )
  saved = json.loads(args.grids.read_text())
  best = {
    (r["problem"], r["inner"], r["schedule"]): r
    for r in saved["rows"]
    if r["family"] == "grid"
  }
  print(f"gen settings: {args.settings or 'defaults'}")
  for name, value in args.rule.items():
    # Screens of module-level constants, read at trace time: the rule's, or
    # gen's ("gen.NAME").
    module, _, attribute = name.rpartition(".")
    setattr(gen_lib if module == "gen" else rule_lib, attribute, value)
  rows = []
  for name in names:
    problem = QUALITY_PROBLEMS[name]()
    steps = args.steps or problem.steps
    settings = dict(args.settings)
    if isinstance(settings.get("multiplier"), int | float):
      # A number in JSON stands for a constant multiplier schedule.
      settings["multiplier"] = optax.constant_schedule(settings["multiplier"])
    if settings.get("multiplier") == "cosine":
      settings["multiplier"] = optax.cosine_decay_schedule(1.0, steps)
    if settings.get("total_steps") == "run":
      settings["total_steps"] = steps
    seeds = quality.seeds_for(problem, args.seeds)
    for inner in args.inners:
      grid_inner = "sgd-momentum" if inner == "sgd" else inner
      for loop in args.loops:
        method = quality.gen_method(inner, loop, **settings)
        run = quality.train(problem, method, steps, seeds)
        final, rates = run["final"][:, 0], run["rates"][:, 0]
        grids = {s: best[(name, grid_inner, s)] for s in ("constant", "cosine")}
        typical = {s: np.median(g["final_loss_seeds"]) for s, g in grids.items()}
        fails = quality.failed(final, run["initial"], typical["constant"])
        row = {
          "problem": name,
          "split": problem.split,
          "method": method.name,
          "final_loss": float(final.mean()),
          "final_loss_seeds": final.tolist(),
          "failed_seeds": [int(i) for i in np.flatnonzero(fails)],
          **{
            f"over_best_{s}": float(final.mean() / grids[s]["final_loss"])
            for s in grids
          },
          **{
            f"worst_seed_over_best_{s}": float(final.max() / typical[s]) for s in grids
          },
          "median_rate_at": {
            str(s): float(np.median(rates[:, s - 1]))
            for s in sorted({min(100, steps), steps // 2, steps})
          },
        }
        rows.append(row)
        print(
          f"{name:25s} {method.name:32s} loss {row['final_loss']:.4g}"
          f"  /best constant {row['over_best_constant']:.3g}"
          f" (worst seed {row['worst_seed_over_best_constant']:.3g})"
          f"  /best cosine {row['over_best_cosine']:.3g}"
          f"  failed {len(row['failed_seeds'])}/{seeds}"
          f"  seeds {np.array2string(final, precision=3)}"
          f"  median α at steps {row['median_rate_at']}",
          flush=True,
        )
  print()
  for method in dict.fromkeys(r["method"] for r in rows):
    mine = [r for r in rows if r["method"] == method]
    print(
      f"{method:32s} "
      + "  ".join(
        f"/best {s}: worst {max(r[f'over_best_{s}'] for r in mine):.2f}"
        f" median {np.median([r[f'over_best_{s}'] for r in mine]):.2f}"
        f" worst seed {max(r[f'worst_seed_over_best_{s}'] for r in mine):.2f}"
        for s in ("constant", "cosine")
      )
      + f"  failures {sum(len(r['failed_seeds']) for r in mine)}"
    )
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
      "settings": args.settings,
      "rule": args.rule,
      "split": args.split,
      "seeds": args.seeds,
    }
    args.out.write_text(json.dumps({**record, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
