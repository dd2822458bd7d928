"""The benchmark scripts run end to end in their --quick configuration."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _run(script, *args):
  result = subprocess.run(
    [sys.executable, str(BENCHMARKS / script), "--quick", *args],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=BENCHMARKS,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def test_overhead_quick(tmp_path):
  out = tmp_path / "overhead.json"
  _run("overhead.py", "--out", str(out))
  rows = json.loads(out.read_text())["rows"]
  methods = {row["method"] for row in rows}
  assert {"adam (inner step)", "gen forward-over-reverse", "gen probes"} <= methods
  assert all(np.isfinite(row["ratio"]) and row["ratio"] > 0 for row in rows)
  assert rows[0]["ratio"] == 1.0


def test_quality_quick(tmp_path):
  stdout = _run("quality.py", "--out", str(tmp_path))
  summary = json.loads((tmp_path / "quality.json").read_text())
  required = {"GeN-SGD", "GeN-SGD-momentum", "GeN-AdamW", "AdamW grid"}
  required |= {"SGD-momentum grid", "prodigy", "dadapt_adamw", "dog", "cocob"}
  required |= {"mechanize(adam)", "schedule_free_adamw", "polyak_sgd"}
  for problem in ("convex", "mlp"):
    rows = [r for r in summary["rows"] if r["problem"] == problem]
    assert required <= {r["family"] for r in rows}
    # Every method ranked once.
    assert sorted(r["rank"] for r in rows) == list(range(1, len(rows) + 1))
    assert (tmp_path / f"quality-{problem}.png").stat().st_size > 5000
  assert "mean rank" in stdout

  # gen_settings.py with the defaults reproduces quality.py's GeN-AdamW rows.
  screened = _run("gen_settings.py", "--grids", str(tmp_path / "quality.json"))
  lines = screened.splitlines()[1:]
  assert len(lines) == 2  # convex and mlp, GeN-AdamW
  for line in lines:
    problem, _, _, loss = line.split()[:4]
    row = next(
      r
      for r in summary["rows"]
      if r["problem"] == problem and r["family"] == "GeN-AdamW"
    )
    np.testing.assert_allclose(float(loss), row["final_loss"], rtol=1e-3)
