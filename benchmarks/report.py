"""Markdown tables of the saved benchmark results, the tables of docs/benchmarks.md.

docs/benchmarks.md marks each generated block with
``<!-- begin report: NAME.json -->`` ... ``<!-- end report -->``; this script
renders every block from ``benchmarks/results/NAME.json``, and the test suite
fails when a block differs from what is rendered (docs cannot drift from data).

Run: ``python -m benchmarks.report`` (prints the blocks) or
``python -m benchmarks.report --write docs/benchmarks.md`` (rewrites them).
"""

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
BLOCK = re.compile(
  r"(<!-- begin report: (?P<name>[\w.-]+\.json(?:#[\w-]+)?) -->\n)(?P<body>.*?)"
  r"(<!-- end report -->)",
  re.DOTALL,
)


def _command(results: dict) -> str:
  """The recorded command, quoted, with the seed project's folder as ``SEED``.

  The folder is a path of the machine that ran it; the caption says what it is.
  """
  command = re.sub(r"(--seed(?:-project)?) \S+", r"\1 SEED", results["command"])
  caption = " (SEED: the seed project's folder)" if "SEED" in command else ""
  return f"`{command}`{caption}"


def _result_file(name: str) -> str:
  """The file a block renders: ``NAME.json#VIEW`` is a view of ``NAME.json``."""
  return name.split("#")[0]


def _spread(row: dict, key: str, digits: int = 2) -> str:
  return (
    f"{row[key]:.{digits}f} ({row[key + '_min']:.{digits}f}–"
    f"{row[key + '_max']:.{digits}f})"
  )


def _period(row: dict) -> str:
  k = row["refresh_every"]
  if not k:
    return "–"
  if not row["static_refresh"]:
    return str(k)
  # Files from before refresh_next passed the refresh flag alone.
  return f"{k} (static flag{'s' if row.get('tells_next') else ''})"


# (what, method, refresh_every, static flag, most × inner step) per model.
OVERHEAD_TARGETS = (
  (
    "fused forward-over-forward, every step",
    "gen forward-over-forward fused",
    1,
    False,
    1.7,
  ),
  (
    "fused forward-over-reverse, every step",
    "gen forward-over-reverse fused",
    1,
    False,
    2.2,
  ),
  (
    "fused forward-over-forward, every 4 steps",
    "gen forward-over-forward fused",
    4,
    True,
    1.2,
  ),
  ("between refreshes", "gen, between refreshes", 0, True, 1.02),
)
# The defaults (mode="auto") against the targets of the cheaper-defaults
# issue, which differ by model.
_DEFAULT_EVERY_STEP = {"mlp": 1.8, "cnn": 1.35, "transformer": 2.2}
DEFAULT_TARGETS = (
  ("defaults (auto), value_fn, every step", "gen auto", 1, False, _DEFAULT_EVERY_STEP),
  (
    "defaults (auto), fused, every step",
    "gen auto fused",
    1,
    False,
    _DEFAULT_EVERY_STEP,
  ),
  (
    "between refreshes, refresh_every=8",
    "gen, between scheduled refreshes",
    0,
    True,
    1.03,
  ),
  ("between refreshes, refresh_every=1", "gen, between refreshes", 0, True, 1.03),
  (
    "between refreshes, static flags with refresh_next",
    "gen, between refreshes, told refresh_next",
    0,
    True,
    1.03,
  ),
)
SEED_SPEEDUP = 2.5  # the seed's exact step / ours (fused, each exact mode)


def _find(rows: list[dict], model: str, method: str, k: int, static: bool) -> dict:
  return next(
    r
    for r in rows
    if (r["model"], r["method"], r["refresh_every"], r["static_refresh"])
    == (model, method, k, static)
  )


def overhead_targets(results: dict, targets: tuple = OVERHEAD_TARGETS) -> list[str]:
  """The targets table: met only where the median over runs meets it."""
  lines = [
    "| target | model | median over runs (min–max) | met |",
    "|---|---|---|---|",
  ]
  models = list(dict.fromkeys(r["model"] for r in results["rows"]))
  for what, method, k, static, bound in targets:
    for model in models:
      most = bound[model] if isinstance(bound, dict) else bound
      row = _find(results["rows"], model, method, k, static)
      met = "yes" if row["ratio"] <= most else "**no**"
      lines.append(
        f"| {what} ≤ {most}× inner step | {model} | {_spread(row, 'ratio')} | {met} |"
      )
  if "torch_runs" in results and "mlp" in models:
    for mode in ("forward-over-reverse", "forward-over-forward"):
      speedups = [
        torch["seed ExactGen ms"]
        / _find(rows, "mlp", f"gen {mode} fused", 1, False)["ms_per_step"]
        for rows, torch in zip(results["runs"], results["torch_runs"], strict=True)
        if "seed ExactGen ms" in torch
      ]
      if speedups:
        median = float(np.median(speedups))
        met = "yes" if median >= SEED_SPEEDUP else "**no**"
        lines.append(
          f"| the seed's exact step / ours (fused {mode}) ≥ {SEED_SPEEDUP}× | mlp"
          f" | {median:.2f} ({min(speedups):.2f}–{max(speedups):.2f}) | {met} |"
        )
  return lines


def overhead_defaults_table(results: dict) -> str:
  """The sweep of the defaults (``mode="auto"``) against their own targets."""
  return overhead_table(results, DEFAULT_TARGETS)


def overhead_defaults_line(results: dict) -> str:
  """The README's cost line: the defaults' ratios over the models, min–max."""
  rows = results["rows"]
  models = list(dict.fromkeys(r["model"] for r in rows))

  def span(method: str, k: int, static: bool, key: str = "ratio") -> str:
    values = [_find(rows, m, method, k, static)[key] for m in models]
    return f"{min(values):.2f}–{max(values):.2f}"

  return (
    f'With the defaults (`mode="auto"`), over the {", ".join(models)} of'
    f" `benchmarks.overhead` (device: {results['device'].split()[0]}), a step"
    " that refreshes α costs"
    f" {span('gen auto', 1, False)} inner Adam steps with `value_fn`"
    f" ({span('gen auto fused', 1, False)} fused; forward-over-reverse"
    f" {span('gen forward-over-reverse fused', 1, False)} fused), refreshing"
    f" every 8 steps with the static flags {span('gen auto fused', 8, True)},"
    " a step between refreshes"
    f" {span('gen, between refreshes, told refresh_next', 0, True)} with the"
    " static flags `refresh` and `refresh_next`"
    f" ({span('gen, between scheduled refreshes', 0, True)} with"
    f" `refresh_every=8`'s `lax.cond`, {span('gen, between refreshes', 0, True)}"
    " with `refresh` alone on `refresh_every=1`, which stores every step);"
    " the compiled memory of a refreshing step is"
    f" {span('gen auto', 1, False, 'memory_ratio')} the inner step's"
    f" ({_command(results)}, median of {len(results['runs'])} runs)."
  )


def overhead_table(results: dict, targets: tuple = OVERHEAD_TARGETS) -> str:
  lines = [
    f"{_command(results)}: device {results['device']}, jax {results['jax']},"
    f" optax {results['optax']}; {len(results['runs'])} runs of {results['rounds']}"
    " interleaved rounds; median over runs (min–max).",
    "",
    *overhead_targets(results, targets),
    "",
    "| model | method | refresh every | ms/step | × inner step | memory ×"
    " | extra memory (params buffers) |",
    "|---|---|---|---|---|---|---|",
  ]
  for row in results["rows"]:
    lines.append(
      f"| {row['model']} | {row['method']} | {_period(row)}"
      f" | {row['ms_per_step']:.2f} | {_spread(row, 'ratio')}"
      f" | {row['memory_ratio']:.2f} | {row['extra_memory_in_params']:.1f} |"
    )
  torch = results.get("torch")
  if torch:
    lines += [
      "",
      "PyTorch on the MLP 784-512-512-10, batch 256, same machine and runs:",
      "",
      "| step | ms/step | × PyTorch Adam step |",
      "|---|---|---|",
    ]
    names = [key.removesuffix(" ms") for key in torch if key.endswith(" ms")]
    for name in names:
      ms, ratio = torch[f"{name} ms"], torch[f"{name} ratio"]
      lines.append(
        f"| {name} | {ms[0]:.2f} ({ms[1]:.2f}–{ms[2]:.2f})"
        f" | {ratio[0]:.2f} ({ratio[1]:.2f}–{ratio[2]:.2f}) |"
      )
  return "\n".join(lines)


def _cell(row: dict) -> str:
  lr = ""
  if row["best_lr"] is not None:
    lr = f" (lr {row['best_lr']:.0e}{'!' if row['best_lr_at_edge'] else ''})"
  fails = f" ✗{len(row['failed_seeds'])}" if row["failed_seeds"] else ""
  return f"{row['final_loss']:.3g}{lr} #{row['rank']}{fails}"


def _ratio_cell(row: dict, schedule: str) -> str:
  """Mean ratio, the seeds' spread, and failed seeds (✗n)."""
  seeds = row[f"seed_over_best_{schedule}"]
  fails = f" ✗{len(row['failed_seeds'])}" if row["failed_seeds"] else ""
  return (
    f"{row[f'over_best_{schedule}']:.2f} ({min(seeds):.2f}–{max(seeds):.2f}){fails}"
  )


def quality_table(results: dict) -> str:
  problems, rows, summary = results["problems"], results["rows"], results["summary"]
  gen_methods = list(dict.fromkeys(r["method"] for r in rows if r["family"] == "gen"))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  grids = {r["method"] for r in rows if r["family"] == "grid"}
  steps = sorted({p["steps"] for p in problems.values()})
  seeds = sorted({p["seeds"] for p in problems.values()})
  factor = results["fail_factor"]
  lines = [
    f"{_command(results)}: jax {results['jax']}, optax {results['optax']};"
    f" {' or '.join(map(str, steps))} steps and {' or '.join(map(str, seeds))}"
    " seeds per problem.  A run (one seed) **fails** when its final training"
    f" loss is above its initial loss or more than {factor:g}x the median seed"
    " of the best constant rate of its inner optimizer (AdamW for the peers).",
    "",
    "| problem | half | kind | steps | seeds | held-out metric |",
    "|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {name} | {p['split']} | {p['kind']} | {p['steps']} | {p['seeds']}"
    f" | {p['metric_name']} |"
    for name, p in problems.items()
  ]
  lines += [
    "",
    "**GeN's final training loss over the best grid entry of its inner optimizer**"
    " (constant rate / warm-up + cosine peak rate), per half: worst problem (mean"
    " over seeds) and median over problems; the worst single seed over the best"
    " rate's median seed; failed runs out of all seeds of the half; mean rank"
    f" among all {len(methods)} methods and among the"
    f" {len([m for m in methods if m not in grids])} learning-rate-free ones.",
    "",
    "| half | method | worst / constant | median / constant | worst seed / constant"
    " | failed runs | worst / cosine | median / cosine | mean rank"
    " | mean rank, LR-free |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for half, entry in summary.items():
    for method in gen_methods:
      s = entry["methods"][method]
      lines.append(
        f"| {half} | {method}"
        f" | {s['worst_over_best_constant']:.2f} ({s['worst_problem_constant']})"
        f" | {s['median_over_best_constant']:.2f}"
        f" | {s['worst_seed_over_best_constant']:.2f}"
        f" ({s['worst_seed_problem_constant']})"
        f" | {s['failures']}/{s['runs']}"
        f" | {s['worst_over_best_cosine']:.2f} ({s['worst_problem_cosine']})"
        f" | {s['median_over_best_cosine']:.2f}"
        f" | {s['mean_rank']:.1f} | {s['mean_lr_free_rank']:.1f} |"
      )
  lines += [
    "",
    "**Failed runs per method** (seeds that failed, out of all seeds; the problems"
    " where they failed):",
    "",
    "| method | " + " | ".join(h for h in summary) + " |",
    "|---|" + "---|" * len(summary),
  ]
  for method in methods:
    cells = []
    for entry in summary.values():
      s = entry["methods"][method]
      where = f" ({', '.join(s['failed_problems'])})" if s["failed_problems"] else ""
      cells.append(f"{s['failures']}/{s['runs']}{where}")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  for schedule in ("constant", "cosine"):
    lines += [
      "",
      f"**Per problem, over the best {schedule} rate**: GeN's mean ratio, the"
      " spread of its seeds (each over the best rate's median seed), ✗n failed"
      " seeds.",
      "",
      "| problem | half | " + " | ".join(gen_methods) + " |",
      "|---|---|" + "---|" * len(gen_methods),
    ]
    for name, p in problems.items():
      cells = [
        _ratio_cell(
          next(r for r in rows if r["problem"] == name and r["method"] == m), schedule
        )
        for m in gen_methods
      ]
      lines.append(f"| {name} | {p['split']} | " + " | ".join(cells) + " |")
  for half, entry in summary.items():
    if half == "all":
      continue
    names = entry["problems"]
    lines += [
      "",
      f"**{half.capitalize()} half**: final training loss (mean over seeds) and rank;"
      " grids at their best rate (`!`: on the grid's edge); ✗n failed seeds.",
      "",
      "| method | " + " | ".join(names) + " | mean rank |",
      "|---|" + "---|" * (len(names) + 1),
    ]
    order = sorted(entry["methods"], key=lambda m: entry["methods"][m]["mean_rank"])
    for method in order:
      cells = [
        _cell(next(r for r in rows if r["problem"] == n and r["method"] == method))
        for n in names
      ]
      lines.append(
        f"| {method} | "
        + " | ".join(cells)
        + f" | {entry['methods'][method]['mean_rank']:.1f} |"
      )
    lines += [
      "",
      "Held-out metric of the same runs:",
      "",
      "| method | "
      + " | ".join(f"{n} ({problems[n]['metric_name']})" for n in names)
      + " |",
      "|---|" + "---|" * len(names),
    ]
    for method in order:
      cells = [
        f"{r['metric']:.3g}"
        for n in names
        for r in rows
        if r["problem"] == n and r["method"] == method
      ]
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def quality_summary_table(results: dict) -> str:
  """The README's table: GeN with one batch per step, the cosine grid, the peers."""
  summary = results["summary"]
  methods = [
    m
    for m in summary["all"]["methods"]
    if (m.startswith("GeN") and "own batch" in m)
    or m == "AdamW cosine"
    or not (m.startswith(("GeN", "AdamW", "SGD")))
  ]
  halves = [h for h in summary if h != "all"]
  label = {"select": "selection", "report": "held-out"}

  def times(x: float) -> str:
    return f"{x:.0f}x" if x >= 100 else f"{x:.3g}x"

  lines = [
    "Final training loss over the best constant rate of the method's inner"
    " optimizer (AdamW for the peers; the cosine grid at its best peak per"
    " problem): median over problems, the worst single seed, and failed runs"
    f" (final loss above the initial or over {results['fail_factor']:g}x the best"
    " constant rate).",
    "",
    "| method | "
    + " | ".join(
      f"{label[h]}: median | {label[h]}: worst seed | {label[h]}: failed"
      for h in halves
    )
    + " |",
    "|---|" + "---|---|---|" * len(halves),
  ]
  for method in methods:
    cells = []
    for half in halves:
      s = summary[half]["methods"][method]
      cells += [
        f"{s['median_over_best_constant']:.2f}x",
        times(s["worst_seed_over_best_constant"]),
        f"{s['failures']}/{s['runs']}",
      ]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def slope_source_table(results: dict) -> str:
  """benchmarks/studies/slope_source.py: final losses per seed and their mean."""
  settings = results["settings"]
  lines = [
    f"Digits MLP, GeN-Adam measuring along the current update, batch "
    f"{settings['batch_size']}, {settings['steps']} steps; final training loss "
    "on all the data.",
    "",
    "| slope and curvature from | per seed | mean |",
    "| --- | --- | --- |",
  ]
  for row in results["rows"]:
    losses = row["final_losses"]
    per_seed = ", ".join(f"{v:.4f}" for v in losses)
    lines.append(f"| {row['variant']} | {per_seed} | {sum(losses) / len(losses):.4f} |")
  return "\n".join(lines)


def gen_sgd_diagnosis_table(results: dict) -> str:
  """benchmarks/studies/gen_sgd_diagnosis.py: α against the curvature scales."""
  lines = [
    "| step | full loss | GeN α | full-batch greedy | 2/λ_max | batch-64 greedy "
    "| full / batch-64 greedy | noise share of E‖g_B‖² |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in results["rows"]:
    # A negative full-batch greedy step (negative curvature along ∇L) has no ratio.
    ratio = r["full_batch_greedy"] / r["batch_greedy"]
    ratio_cell = f"{ratio:.1f}" if r["full_batch_greedy"] > 0 else "–"
    lines.append(
      f"| {r['step']} | {r['loss']:.3f} | {r['gen_alpha']:.2e} "
      f"| {r['full_batch_greedy']:.2e} | {r['stability_limit']:.2e} "
      f"| {r['batch_greedy']:.2e} | {ratio_cell} | {r['noise_share']:.2f} |"
    )
  return "\n".join(lines)


def soak_table(results: dict) -> str:
  """benchmarks/soak.py: a long run with injected faults against a clean one."""

  def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"

  lines = [
    f"{results['steps']} steps, seed {results['seed']}; faults per kind: NaN, inf, "
    "spike, zero.",
    "",
    "| run | no NaN in params/state | α range | α, last 10% / clean "
    "| final loss (clean) | NaN/inf skipped and counted | spike loss / median "
    "| zero batch recorded |",
    "| --- | --- | --- | ---: | --- | --- | ---: | --- |",
  ]
  for name, run in results["runs"].items():
    r = run["summary"]
    faults = "/".join(str(r["faults"][k]) for k in ("nan", "inf", "spike", "zero"))
    spike = r["spike_loss_over_median"]
    lines.append(
      f"| {name} ({faults}) | {yes(r['params_and_state_finite'])} "
      f"| {r['alpha_min']:.3g}–{r['alpha_max']:.3g} "
      f"| {r['alpha_tail_over_clean']:.2f} "
      f"| {r['final_loss']:.2e} ({r['clean_final_loss']:.2e}) "
      f"| {yes(r['nonfinite_counted_at_fault_steps'] and r['gen_count_skipped'])} "
      f"| {'–' if spike is None else f'{spike:.0f}x'} | {yes(r['zero_recorded'])} |"
    )
  return "\n".join(lines)


def seed_demo_table(results: dict) -> str:
  """benchmarks/seed_demo.py: final MSE per inner, method and seed."""
  rows = results["rows"]
  seeds = list(dict.fromkeys(r["seed"] for r in rows))
  lines = [
    f"{_command(results)}: jax"
    f" {results['jax']}, optax {results['optax']}, torch {results['torch']}."
    f" {results['problem']}.  Final MSE on all the data; seed 11 is the demo's"
    " own.",
    "",
    "| inner | method | "
    + " | ".join(f"seed {s}" for s in seeds)
    + " | mean | worst |",
    "|---|---|" + "---|" * (len(seeds) + 2),
  ]
  for inner in dict.fromkeys(r["inner"] for r in rows):
    for method in dict.fromkeys(r["method"] for r in rows):
      mine = {
        r["seed"]: r["final_mse"]
        for r in rows
        if r["inner"] == inner and r["method"] == method
      }
      values = [mine[s] for s in seeds]
      lines.append(
        f"| {inner} | {method} | "
        + " | ".join(f"{v:.4f}" for v in values)
        + f" | {np.mean(values):.4f} | {max(values):.4f} |"
      )
  return "\n".join(lines)


def gpu_lm_table(results: dict | None) -> str:
  """benchmarks/gpu_lm.py on a device: losses, step ratios, memory per method."""
  if results is None:
    return (
      "No GPU results yet: no session with a device has run the check.  The"
      " CPU smoke run (`--size small`) is in the slow test tier."
    )
  lines = [
    f"{_command(results)} on {results['device']}: jax {results['jax']}, optax"
    f" {results['optax']}; model {results['model']}; corpus"
    f" {results['corpus_bytes'][0]:,} training and {results['corpus_bytes'][1]:,}"
    f" held-out bytes; {results['steps_per_method']} steps per method"
    + (
      f" (planned for a budget of {results['budget_seconds']:g} s)"
      if results["budget_seconds"]
      else ""
    )
    + f"; the whole check took {results['total_seconds']:.0f} s.",
    "",
    "| method | training loss | held-out loss | step / AdamW step | memory (MB)"
    " | final α |",
    "|---|---|---|---|---|---|",
  ]
  for r in results["results"]:
    rate = r["rates"][-1] if r["rates"] and np.isfinite(r["rates"][-1]) else None
    lines.append(
      f"| {r['method']} | {r['train_loss']:.4f} | {r['held_out_loss']:.4f}"
      f" | {r['step_ratio']:.2f} | {r['memory_mb']:.0f}"
      f" | {'—' if rate is None else f'{rate:.3g}'} |"
    )
  return "\n".join(lines)


def step_flops_table(results: dict) -> str:
  """benchmarks/studies/step_flops.py: XLA's counts of a refreshing step."""
  lines = [
    f"`{results['command']}`: jax {results['jax']}, device {results['device']}.",
    "",
    "| model | method | GFLOP | flops × inner step | bytes accessed × inner step |",
    "|---|---|---:|---:|---:|",
  ]
  for r in results["rows"]:
    lines.append(
      f"| {r['model']} | {r['method']} | {r['flops'] / 1e9:.3f} "
      f"| {r['flops_ratio']:.2f} | {r['bytes_ratio']:.2f} |"
    )
  return "\n".join(lines)


RENDERERS: dict[str, Callable[[Any], str]] = {
  "gpu-lm.json": gpu_lm_table,
  "seed-demo.json": seed_demo_table,
  "overhead-cpu.json": overhead_table,
  "overhead-defaults.json": overhead_defaults_table,
  "overhead-defaults.json#readme": overhead_defaults_line,
  "quality.json": quality_table,
  "quality.json#summary": quality_summary_table,
  "study-slope-source.json": slope_source_table,
  "study-gen-sgd-diagnosis.json": gen_sgd_diagnosis_table,
  "study-step-flops.json": step_flops_table,
  "soak.json": soak_table,
}


# Results that only some sessions can make (a lent device): rendered as absent.
OPTIONAL = {"gpu-lm.json"}


def render(name: str, folder: Path = RESULTS) -> str:
  """The markdown block of one saved result file (``None`` where none is saved)."""
  path = folder / _result_file(name)
  if name in OPTIONAL and not path.exists():
    return RENDERERS[name](None)
  return RENDERERS[name](json.loads(path.read_text()))


def render_docs(text: str, folder: Path = RESULTS) -> str:
  """``text`` with every marked block replaced by its rendering."""

  def replace(match: re.Match) -> str:
    return (
      f"{match.group(1)}\n{render(match.group('name'), folder)}\n\n{match.group(4)}"
    )

  return BLOCK.sub(replace, text)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results", type=Path, default=RESULTS)
  parser.add_argument("--write", type=Path, default=None, help="a markdown file")
  args = parser.parse_args()
  if args.write:
    args.write.write_text(render_docs(args.write.read_text(), args.results))
    return
  for name in RENDERERS:
    if (args.results / _result_file(name)).exists():
      print(f"### {name}\n\n{render(name, args.results)}\n")


if __name__ == "__main__":
  main()
