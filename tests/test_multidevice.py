"""Runs tests/multidevice in a fresh process with 8 host CPU devices.

The device count is fixed when jax starts, so these tests cannot share the
default process.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_multidevice_suite_on_eight_host_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["GEN_OPTAX_MULTIDEVICE"] = "1"
  here = Path(__file__).parent
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-p",
      "no:cacheprovider",
      str(here / "multidevice"),
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    cwd=here.parent,
  )
  assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
  assert " passed" in result.stdout and "skipped" not in result.stdout
