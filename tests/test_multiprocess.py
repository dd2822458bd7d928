"""GeN across processes: 2 processes × 4 CPU devices = one process × 8.

``tests/multiprocess/worker.py`` trains with GeN (lookback, lazy refresh every
3 steps) over a global mesh of 8 devices; here it runs once alone with 8
local devices and once as 2 processes of 4 devices that meet through
``jax.distributed.initialize`` on localhost (gloo collectives), for
replicated parameters (data parallel) and FSDP-sharded ones.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).parent / "multiprocess" / "worker.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(out: Path, layout: str, processes: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // processes}"
  command = [sys.executable, str(WORKER), "--out", str(out), "--layout", layout]
  if processes > 1:
    command += ["--num-processes", str(processes)]
    command += ["--coordinator", f"localhost:{_free_port()}"]
  runs = [
    subprocess.Popen(
      [*command, "--process-id", str(i)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(processes)
  ]
  for run in runs:
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output[-4000:]
  return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
  folder = tmp_path_factory.mktemp("multiprocess")
  return {
    (layout, processes): _launch(
      folder / f"{layout}-{processes}.json", layout, processes
    )
    for layout in ("replicated", "fsdp")
    for processes in (1, 2)
  }


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["replicated", "fsdp"])
def test_two_processes_equal_one_process(runs, layout):
  one, two = runs[(layout, 1)], runs[(layout, 2)]
  assert (one["process_count"], one["local_devices"]) == (1, 8)
  assert (two["process_count"], two["local_devices"]) == (2, 4)
  # Same program, same global data; only the all-reduce differs (gloo between
  # processes, in-process otherwise), which may add in another order: float32
  # rounding.  Measured: α equal, params (size ~0.5) within 4e-7 after 12
  # steps; 1e-5 leaves room for Adam's m/√v amplifying it.
  np.testing.assert_allclose(two["learning_rate"], one["learning_rate"], rtol=1e-5)
  assert two["num_accepted"] == one["num_accepted"] == 3  # refreshes at 3, 6, 9
  for key in ("params", "previous_step"):
    for name in ("w", "v"):
      np.testing.assert_allclose(two[key][name], one[key][name], atol=1e-5, rtol=0)
  # The lookback direction is the step taken: θ_T − θ_{T−1}, non-zero.
  assert np.abs(np.asarray(two["previous_step"]["w"])).max() > 0
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)


@pytest.mark.slow
def test_fsdp_shards_the_gen_state_like_the_params(runs):
  replicated, fsdp = runs[("replicated", 2)], runs[("fsdp", 2)]
  assert fsdp["step_shards_like_params"] and replicated["step_shards_like_params"]
  # Every params-shaped state leaf (GeN's stored step, Adam's two moments) is
  # split over the 8 devices; the scalars (counts, α, running means) are
  # replicated.  So a device holds 1/8 of the params-shaped state, plus the
  # scalars, which are the same in both layouts.
  sizes = 16 * 32 + 32
  params_shaped = 3 * sizes * 4  # bytes: previous step, Adam's mu and nu, float32
  scalars = replicated["state_bytes_per_device"] - params_shaped
  assert fsdp["state_bytes_per_device"] == params_shaped // 8 + scalars
  # The compiled step's arguments per device shrink by the same 7/8 of the
  # params and of the params-shaped state.
  saved = (params_shaped + sizes * 4) * 7 // 8
  assert (
    replicated["argument_bytes_per_device"] - fsdp["argument_bytes_per_device"] == saved
  )
