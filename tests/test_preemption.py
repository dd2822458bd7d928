"""A run killed with SIGKILL at a random step resumes exactly (CPU).

``examples/resumable_training.py`` saves with orbax's ``CheckpointManager``
(async saves, every 5 steps).  Killed at a random step, possibly in the middle
of a save, and started again, it must resume from the last complete
checkpoint and end with parameters and GeN state bitwise equal to an
uninterrupted run.
"""

import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent.parent / "examples" / "resumable_training.py"
STEPS = 60


def _command(folder: Path) -> list[str]:
  return [sys.executable, str(SCRIPT), "--dir", str(folder), "--steps", str(STEPS)]


def _finish(folder: Path) -> str:
  result = subprocess.run(
    _command(folder), capture_output=True, text=True, timeout=300, check=False
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def _kill_at(folder: Path, step: int) -> None:
  """Starts a run and kills it (SIGKILL) once it reports ``step``."""
  run = subprocess.Popen(
    _command(folder), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
  )
  assert run.stdout is not None
  for line in run.stdout:
    if line.startswith(f"step {step} "):
      run.kill()  # SIGKILL: no handler, no flush, no finalisation
      break
  run.wait(timeout=60)
  assert run.returncode == -9, f"the run ended before step {step}"


@pytest.mark.slow
def test_killed_run_resumes_bitwise(tmp_path):
  uninterrupted = tmp_path / "uninterrupted"
  _finish(uninterrupted)

  seed = random.randrange(2**32)
  rng = random.Random(seed)
  interrupted = tmp_path / "interrupted"
  # Killed twice: once from scratch, once after resuming (the second kill
  # comes later than the first, so the resumed run reaches it).
  kills = sorted(rng.sample(range(8, STEPS - 5), 2))
  for step in kills:
    _kill_at(interrupted, step)
  output = _finish(interrupted)
  # It resumed from a complete checkpoint at or before the last kill (saves
  # every 5 steps; one still being written when killed is ignored).
  resumed_from = [int(s) for s in re.findall(r"resumed from step (\d+)", output)]
  assert len(resumed_from) == 1, (seed, kills, output[:500])
  assert resumed_from[0] % 5 == 0, (seed, kills, resumed_from)
  assert kills[0] - 10 <= resumed_from[0] <= kills[-1], (seed, kills, resumed_from)

  a = np.load(uninterrupted / "final.npz")
  b = np.load(interrupted / "final.npz")
  assert sorted(a.files) == sorted(b.files)
  assert any("previous_step" in name for name in a.files)  # GeN's state is there
  for name in a.files:
    assert np.array_equal(a[name], b[name]), (name, seed, kills)
