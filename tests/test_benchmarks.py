"""The benchmark scripts: their problems, their arithmetic, the docs made from them."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import quality, report
from benchmarks.quality_problems import QUALITY_PROBLEMS, SPLIT

ROOT = Path(__file__).parent.parent
BENCHMARKS = ROOT / "benchmarks"

# The problems the suite's smoke run trains with every method (cheap ones).
SMOKE = ("cancer-logistic", "digits-softmax-fullbatch")


def _run(module, *args):
  """Runs ``python -m benchmarks.MODULE ARGS`` from the repository root."""
  result = subprocess.run(
    [sys.executable, "-m", f"benchmarks.{module}", *args],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_overhead_quick_summarizes_its_runs(tmp_path):
  out = tmp_path / "overhead.json"
  _run("overhead", "--quick", "--out", str(out))
  results = json.loads(out.read_text())
  runs, rows = results["runs"], results["rows"]
  assert len(runs) == 2 and all(len(run) == len(rows) for run in runs)
  methods = {row["method"] for row in rows}
  assert {"gen forward-over-reverse", "gen forward-over-reverse fused"} <= methods
  for i, row in enumerate(rows):
    ratios = [run[i]["ratio"] for run in runs]
    # Each summary figure is the median of the saved runs, with their range.
    assert row["ratio"] == pytest.approx(float(np.median(ratios)))
    assert (row["ratio_min"], row["ratio_max"]) == (min(ratios), max(ratios))
  # The targets table takes its verdict from the median, not from one run.
  lines = report.overhead_targets(results)
  target = next(line for line in lines if "between refreshes" in line)
  between = next(r for r in rows if r["method"] == "gen, between refreshes")
  assert f"{between['ratio']:.2f} (" in target
  assert target.endswith("| yes |") == (between["ratio"] <= 1.02)


def test_split_is_fixed_and_covers_the_kinds():
  select, held_out = set(SPLIT["select"]), set(SPLIT["report"])
  assert not select & held_out
  assert select | held_out == set(QUALITY_PROBLEMS)
  assert len(QUALITY_PROBLEMS) >= 8
  problems = {name: make() for name, make in QUALITY_PROBLEMS.items()}
  for half, names in SPLIT.items():
    assert all(problems[n].split == half for n in names)
    # Each half has a deterministic problem and a long run.
    assert any(problems[n].batch_size is None for n in names)
    assert any(problems[n].steps >= 2000 for n in names)
  # Mini-batches are small (≤ 64): where the learning rate is hard to choose.
  assert all(p.batch_size is None or p.batch_size <= 64 for p in problems.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(QUALITY_PROBLEMS))
def test_problem_evaluates(name):
  problem = QUALITY_PROBLEMS[name]()
  params = problem.init(jax.random.key(0))
  idx = quality.batch_indices(problem, steps=2, seed=0)
  batch = jax.tree.map(lambda a: a[idx[0, 0]], problem.train)
  loss, grads = jax.jit(jax.value_and_grad(problem.loss))(params, batch)
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.isfinite(jax.jit(problem.metric)(params, problem.test))
  if problem.batch_size is not None:
    # The gradient's batch and the independent one differ, without repeats.
    assert len(set(idx[0, 0])) == problem.batch_size
    assert set(idx[0, 0]) != set(idx[0, 1])


@pytest.mark.parametrize("method_name", ["GeN-AdamW (own batch)", "AdamW cosine"])
def test_vectorized_and_sequential_runs_agree(method_name):
  # Two independent drivers of the same runs: vmap + lax.scan, and a Python
  # loop over a jitted step; every (seed, rate) must land in the same place.
  problem = QUALITY_PROBLEMS["cancer-logistic"]()
  method = next(m for m in quality.methods(steps=6) if m.name == method_name)
  together = quality.train(problem, method, steps=6, seeds=2)
  one_by_one = quality.train(problem._replace(vectorize=False), method, 6, 2)
  # float32 arithmetic in a different order (batched matmuls): 1e-5 relative.
  for key in ("final", "losses", "rates"):
    np.testing.assert_allclose(together[key], one_by_one[key], rtol=1e-5)
  assert together["final"].shape == (2, len(together["lrs"]))


@pytest.mark.slow
def test_quality_smoke_run_is_complete(tmp_path):
  stdout = _run(
    "quality",
    "--steps",
    "3",
    "--seeds",
    "1",
    "--out",
    str(tmp_path),
    "--problems",
    *SMOKE,
  )
  results = json.loads((tmp_path / "quality.json").read_text())
  names = [m.name for m in quality.methods(steps=3)]
  for problem in SMOKE:
    rows = {r["method"]: r for r in results["rows"] if r["problem"] == problem}
    assert sorted(rows) == sorted(names)  # every method, once
    assert all(math.isfinite(r["final_loss"]) for r in rows.values())
    assert sorted(r["rank"] for r in rows.values()) == list(range(1, len(names) + 1))
    free = [r["lr_free_rank"] for r in rows.values() if r["family"] != "grid"]
    assert sorted(free) == list(range(1, len(free) + 1))
    # The ratios divide by the matching grid's best entry.
    for row in rows.values():
      if row["family"] == "gen":
        inner = "AdamW" if "AdamW" in row["method"] else "SGD-m"
        for schedule in ("constant", "cosine"):
          best = rows[f"{inner} {schedule}"]["final_loss"]
          assert row[f"over_best_{schedule}"] == pytest.approx(row["final_loss"] / best)
    assert (tmp_path / f"quality-{problem}.png").stat().st_size > 5000
  half = results["summary"]["report"]["methods"]["GeN-AdamW (own batch)"]
  mine = [
    r["over_best_constant"]
    for r in results["rows"]
    if r["method"] == "GeN-AdamW (own batch)" and r["split"] == "report"
  ]
  assert half["worst_over_best_constant"] == max(mine)
  assert half["median_over_best_constant"] == pytest.approx(np.median(mine))
  assert "report half" in stdout
  assert "GeN-SGD-m (independent batch)" in report.render("quality.json", tmp_path)

  # gen_settings.py with the defaults reproduces quality.py's GeN rows.
  screened = _run(
    "gen_settings",
    "--grids",
    str(tmp_path / "quality.json"),
    "--steps",
    "3",
    "--seeds",
    "1",
    "--problems",
    *SMOKE,
    "--out",
    str(tmp_path / "screen.json"),
  )
  screen = json.loads((tmp_path / "screen.json").read_text())["rows"]
  assert len(screen) == len(SMOKE) * 4 and "median" in screened
  for row in screen:
    saved = next(
      r
      for r in results["rows"]
      if r["problem"] == row["problem"] and r["method"] == row["method"]
    )
    assert row["final_loss"] == pytest.approx(saved["final_loss"], rel=1e-6)
    assert row["over_best_cosine"] == pytest.approx(saved["over_best_cosine"], rel=1e-6)


def test_docs_tables_are_rendered_from_saved_results():
  # docs/benchmarks.md cannot drift from benchmarks/results/*.json.
  docs = (ROOT / "docs" / "benchmarks.md").read_text()
  readme = (ROOT / "README.md").read_text()
  # Every renderer is used, on this page or in the README.
  blocks = report.BLOCK.findall(docs) + report.BLOCK.findall(readme)
  assert {name for _, name, _, _ in blocks} == set(report.RENDERERS)
  assert report.render_docs(docs) == docs, (
    "docs/benchmarks.md differs from the saved results: run "
    "python -m benchmarks.report --write docs/benchmarks.md"
  )


def test_readme_results_are_rendered_from_saved_results():
  readme = (ROOT / "README.md").read_text()
  assert [name for _, name, _, _ in report.BLOCK.findall(readme)] == [
    "quality.json#summary",
    "overhead-defaults.json#readme",
  ]
  assert report.render_docs(readme) == readme, (
    "README.md differs from the saved results: run "
    "python -m benchmarks.report --write README.md"
  )


@pytest.mark.slow
def test_gpu_lm_small_trains_every_method_on_the_same_data(tmp_path):
  # The CPU smoke run of the accelerator check: every method, one record.
  out = tmp_path / "gpu-lm.json"
  _run("gpu_lm", "--size", "small", "--steps", "24", "--out", str(out))
  record = json.loads(out.read_text())
  results = {r["method"]: r for r in record["results"]}
  assert len(results) == 7 and record["steps_per_method"] == 24
  assert {"GeN-AdamW", "GeN-AdamW horizon", "prodigy"} <= set(results)
  # Every method starts from the same initialisation on the same first
  # batch: the first training losses agree (float32 forward passes).
  first = [r["losses"][0] for r in results.values()]
  assert max(first) - min(first) < 1e-5
  # ... and that loss is the uniform guess over bytes, ln 256, give or take
  # the initial logits' spread.
  assert abs(first[0] - math.log(256)) < 0.5
  for r in results.values():
    assert len(r["losses"]) == 24 and all(math.isfinite(v) for v in r["losses"])
    assert math.isfinite(r["train_loss"]) and math.isfinite(r["held_out_loss"])
    assert r["step_ratio"] > 0 and r["memory_mb"] > 0
  # GeN's α is recorded every step and is a rate inside its clamp.
  for name in ("GeN-AdamW", "GeN-AdamW, refresh every 8", "GeN-AdamW horizon"):
    assert all(1e-6 <= a <= 1.0 for a in results[name]["rates"])
  # The step ratios divide by the first AdamW row's step.
  assert results[f"AdamW cosine {3e-4:g}"]["step_ratio"] == 1.0
  assert (tmp_path / "gpu-lm.png").stat().st_size > 0


@pytest.mark.slow
def test_gpu_lm_budget_run_follows_its_plan_and_compiles_nothing_after_it(tmp_path):
  out = tmp_path / "gpu-lm.json"
  budget = 300  # compiling the 7 methods takes about a minute on 2 cores
  _run("gpu_lm", "--size", "small", "--budget-seconds", str(budget), "--out", str(out))
  record = json.loads(out.read_text())
  steps = record["steps_per_method"]
  # Every method runs the planned steps, and the plan fits the budget.
  assert steps >= 1 and all(r["steps"] == steps for r in record["results"])
  assert record["planned_seconds"] <= budget
  # The plan is only as good as its warm-up: the warm-up must have compiled
  # everything the run uses (a compilation after it, e.g. of the evaluation,
  # is time the plan never counted; the wall time itself is not asserted,
  # it depends on the machine's load).
  assert record["compilations_after_plan"] == 0


def test_gpu_lm_plan_counts_the_overheads_and_leaves_a_tenth():
  from benchmarks import gpu_lm

  warmups = [
    {"step_seconds": 0.5, "overhead_seconds": 3.0},
    {"step_seconds": 1.5, "overhead_seconds": 7.0},
  ]
  # 100 s budget, 20 s spent, 10 s outside the steps of the two methods:
  # 90% of the 70 s left at 2 s per step (both methods) is 31 steps, 62 s;
  # a cap binds below that.
  assert gpu_lm.plan(100, 20, warmups, cap=1000) == (31, 62.0)
  assert gpu_lm.plan(100, 20, warmups, cap=10) == (10, 20.0)
  assert gpu_lm.plan(100, 120, warmups, cap=1000) == (0, 0.0)
  assert gpu_lm.plan(100, 92, warmups, cap=1000) == (
    0,
    0.0,
  )  # overheads exceed what is left
