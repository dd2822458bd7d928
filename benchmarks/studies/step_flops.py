"""How much arithmetic a GeN step adds, as XLA counts it: the floor of its cost.

For each timed model of ``benchmarks.overhead`` it compiles the inner step
(``jax.grad`` + Adam) and GeN-Adam steps that refresh α (``value_fn`` and
fused, in the default mode and in forward-over-reverse) and prints XLA's
cost analysis of each compiled program: floating-point operations and bytes
accessed, as ratios to the inner step's.  No timing: the counts are
properties of the compiled programs, the same on every run of this machine.

Run: ``python -m benchmarks.studies.step_flops --out
benchmarks/results/study-step-flops.json`` (about three minutes).
"""

import argparse
import json
from pathlib import Path

import jax

from benchmarks import overhead
from benchmarks.models import TIMED_MODELS

MODES = ("auto", "forward-over-reverse")
# The inner step and GeN refreshing every step, through value_fn and fused:
# overhead's configs that are not static (those are the lazy ones).
CONFIGS = [c for c in overhead.configs_for(MODES, [1], [], MODES) if not c.static]


def cost(problem, params, config) -> dict[str, float]:
  """XLA's flops and bytes accessed of the compiled step of ``config``."""
  step = jax.jit(overhead.train_step(problem, config))
  compiled = step.lower(*overhead.step_args(problem, params, config)).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):  # older jax: one dict per computation
    analysis = analysis[0]
  return {key: float(analysis[key]) for key in ("flops", "bytes accessed")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=None)
  args = parser.parse_args()
  rows = []
  print(f"{'model':12} {'method':32} {'GFLOP':>8} {'flops x':>8} {'bytes x':>8}")
  for name, make in TIMED_MODELS.items():
    problem = make()
    params = problem.init(jax.random.key(0))
    counts = [cost(problem, params, config) for config in CONFIGS]
    inner = counts[0]  # the first config is the inner step
    for config, count in zip(CONFIGS, counts, strict=True):
      row = {
        "model": name,
        "method": config.method,
        **count,
        "flops_ratio": count["flops"] / inner["flops"],
        "bytes_ratio": count["bytes accessed"] / inner["bytes accessed"],
      }
      rows.append(row)
      print(
        f"{name:12} {config.method:32} {count['flops'] / 1e9:8.3f} "
        f"{row['flops_ratio']:8.2f} {row['bytes_ratio']:8.2f}"
      )
  if args.out:
    command = "python -m benchmarks.studies.step_flops --out " + str(args.out)
    meta = {
      "command": command,
      "jax": jax.__version__,
      "device": jax.devices()[0].platform,
    }
    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
  main()
