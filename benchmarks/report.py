"""Markdown tables of the saved benchmark results, for docs/benchmarks.md.

Run: ``python benchmarks/report.py benchmarks/results``
"""

import json
import sys
from pathlib import Path


def overhead_table(results: dict) -> str:
  lines = [
    f"Device: {results['device']}, jax {results['jax']}, optax {results['optax']}.",
    "",
    "| model | method | refresh every | ms/step | × inner step | memory × |",
    "|---|---|---|---|---|---|",
  ]
  for row in results["rows"]:
    k = row["refresh_every"]
    period = "–" if not k else f"{k}{' (static flag)' if row['static_refresh'] else ''}"
    lines.append(
      f"| {row['model']} | {row['method']} | {period} | {row['ms_per_step']:.2f}"
      f" | {row['ratio']:.2f} | {row['memory_ratio']:.2f} |"
    )
  torch = results.get("torch")
  if torch:
    lines += [
      "",
      "| gen-optim (PyTorch) vs gen_optax, MLP 784-512-512-10, B256 | value |",
    ]
    lines += ["|---|---|"]
    lines += [f"| {key} | {value:.3f} |" for key, value in torch.items()]
  return "\n".join(lines)


def quality_table(results: dict) -> str:
  problems = sorted({row["problem"] for row in results["rows"]})
  lines = [
    f"{results['steps']} steps, {results['seeds']} seeds, jax {results['jax']},"
    f" optax {results['optax']}. Final training loss (mean over seeds) and rank.",
    "",
    "| method | " + " | ".join(problems) + " | mean rank |",
    "|---|" + "---|" * (len(problems) + 1),
  ]
  families = sorted(results["mean_rank"], key=results["mean_rank"].get)
  for family in families:
    cells = []
    for problem in problems:
      row = next(
        r for r in results["rows"] if r["problem"] == problem and r["family"] == family
      )
      lr = f" (lr {row['best_lr']:.0e})" if row["best_lr"] else ""
      cells.append(f"{row['final_loss']:.3g}{lr} #{row['rank']}")
    lines.append(
      f"| {family} | " + " | ".join(cells) + f" | {results['mean_rank'][family]:.2f} |"
    )
  gaps = results["gen_adamw_over_best_adamw"]
  lines += [
    "",
    "GeN-AdamW's final loss / best grid AdamW's: "
    + ", ".join(f"{k} {v:.2f}" for k, v in gaps.items()),
  ]
  return "\n".join(lines)


def main() -> None:
  folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
  for name, render in (
    ("overhead-cpu.json", overhead_table),
    ("quality.json", quality_table),
  ):
    path = folder / name
    if path.exists():
      print(f"### {name}\n\n{render(json.loads(path.read_text()))}\n")


if __name__ == "__main__":
  main()
