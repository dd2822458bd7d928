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

Run: ``python benchmarks/gen_settings.py --settings '{"smoothing": 0.95}'``;
a number for ``multiplier`` stands for a constant schedule.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import optax
import quality
from quality_problems import PROBLEMS, SPLIT


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", type=json.loads, default={}, help="gen kwargs")
  parser.add_argument(
    "--inners", nargs="+", default=list(quality.INNERS), choices=quality.GEN_INNERS
  )
  parser.add_argument(
    "--loops", nargs="+", default=list(quality.LOOPS), choices=quality.LOOPS
  )
  parser.add_argument("--split", choices=[*SPLIT, "all"], default="select")
  parser.add_argument("--problems", nargs="+", default=None, choices=PROBLEMS)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument(
    "--steps", type=int, default=None, help="override every problem's"
  )
  parser.add_argument(
    "--grids", type=Path, default=Path(__file__).parent / "results" / "quality.json"
  )
  parser.add_argument("--out", type=Path, default=None, help="save the rows as JSON")
  args = parser.parse_args()
  names = args.problems or (
    list(PROBLEMS) if args.split == "all" else list(SPLIT[args.split])
  )
  saved = json.loads(args.grids.read_text())
  best = {
    (r["problem"], r["inner"], r["schedule"]): r["final_loss"]
    for r in saved["rows"]
    if r["family"] == "grid"
  }
  settings = dict(args.settings)
  print(f"gen settings: {settings or 'defaults'}")
  if isinstance(settings.get("multiplier"), int | float):
    # A number in JSON stands for a constant multiplier schedule.
    settings["multiplier"] = optax.constant_schedule(settings["multiplier"])
  rows = []
  for name in names:
    problem = PROBLEMS[name]()
    steps = args.steps or problem.steps
    for inner in args.inners:
      grid_inner = "sgd-momentum" if inner == "sgd" else inner
      for loop in args.loops:
        method = quality.gen_method(inner, loop, **settings)
        run = quality.train(problem, method, steps, args.seeds)
        final, rates = run["final"][:, 0], run["rates"][:, 0]
        row = {
          "problem": name,
          "split": problem.split,
          "method": method.name,
          "final_loss": float(final.mean()),
          "final_loss_seeds": final.tolist(),
          **{
            f"over_best_{s}": float(final.mean() / best[(name, grid_inner, s)])
            for s in ("constant", "cosine")
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
          f"  /best cosine {row['over_best_cosine']:.3g}"
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
        for s in ("constant", "cosine")
      )
    )
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"settings": args.settings, "split": args.split, "seeds": args.seeds}
    args.out.write_text(json.dumps({**record, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
