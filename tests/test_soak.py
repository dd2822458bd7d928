"""A short run with injected faults (benchmarks/soak.py; the long one is saved
in benchmarks/results/soak.json and shown in docs/benchmarks.md)."""

import pytest

from benchmarks import soak

STEPS = 160  # one fault of each kind in steps [20, 140)


@pytest.fixture(scope="module")
def runs():
  clean = soak.run(STEPS, 1, kinds=())
  return {
    "all": soak.summarize(soak.run(STEPS, 1), clean),
    "no spike": soak.summarize(soak.run(STEPS, 1, kinds=("nan", "inf", "zero")), clean),
  }


@pytest.mark.parametrize("name", ["all", "no spike"])
def test_faults_leave_no_nan_and_alpha_in_bounds(runs, name):
  summary = runs[name]
  assert summary["params_and_state_finite"]
  assert summary["alpha_in_bounds"]
  # Not stuck: α stays far above min_learning_rate (1e-6) to the end.
  assert summary["alpha_tail_min"] > 1e-3


@pytest.mark.parametrize("name", ["all", "no spike"])
def test_every_fault_is_recorded(runs, name):
  summary = runs[name]
  # NaN/inf: apply_if_finite counted exactly those steps, and GeN's count
  # skipped exactly those (its state untouched there).
  assert summary["nonfinite_counted_at_fault_steps"]
  assert summary["gen_count_skipped"]
  # Zero gradient: GeNInfo holds loss, slope and curvature exactly 0.
  assert summary["zero_recorded"]


def test_a_spike_is_visible_in_the_info_loss_and_flagged(runs):
  # Inputs x30 and shuffled labels: GeNInfo's loss at that refresh is above
  # every batch loss of the clean run (which starts at the initial loss), and
  # the rule reacted to it (Status.LOSS_SPIKE: the batch kept out of Adam's
  # moments, the step before it taken back).
  assert runs["all"]["spike_loss_over_clean_max"] > 1
  assert runs["all"]["spike_flagged"]


def test_without_the_spike_alpha_follows_the_clean_run(runs):
  # Skipped NaN/inf steps leave GeN's state as it was, and the flat batch is
  # one measurement among the running means: over the last 10% of the steps α
  # is the clean run's within a factor 2 (measured 0.92).
  assert 0.5 < runs["no spike"]["alpha_tail_over_clean"] < 2.0
