"""Runs the quickstart page's code and plots its history: docs/images/quickstart.png.

Run from the repository root: ``python docs/quickstart_figure.py``.
"""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import gen_optax

DOCS = Path(__file__).parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def main() -> None:
  """Runs the page's blocks as one script and saves the figure of its history."""
  namespace: dict = {"__name__": "quickstart"}
  for block in BLOCK.findall((DOCS / "quickstart.md").read_text()):
    exec(compile(block, "quickstart.md", "exec"), namespace)
  history = namespace["history"]
  alpha = np.array([d["learning_rate"] for d in history])
  loss = np.array([d["loss"] for d in history])
  status = [d["status"] for d in history]
  fig, (ax_rate, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
  ax_rate.semilogy(alpha, color="0.3", lw=1.2, label="α")
  steps = np.arange(len(history))
  markers = {"OVERSHOOT": "o", "LOSS_SPIKE": "v", "ZERO_DIRECTION": "s"}
  for name in sorted(set(status) - {"ACCEPTED"}):
    marked = np.array([s == name for s in status])
    ax_rate.scatter(
      steps[marked],
      alpha[marked],
      s=30,
      marker=markers.get(name, "x"),
      facecolors="none" if name == "ZERO_DIRECTION" else None,
      edgecolors="C2" if name == "ZERO_DIRECTION" else None,
      label=name,
      zorder=3,
    )
  ax_rate.set(xlabel="step", ylabel="α (learning rate)")
  ax_rate.legend(fontsize=10)
  ax_loss.semilogy(loss, color="C0", lw=1)
  ax_loss.set(xlabel="step", ylabel="batch loss at the refresh")
  fig.suptitle(
    f"Quickstart: GeN-AdamW on digits, batch 64 (test accuracy"
    f" {namespace['accuracy']:.3f}, gen_optax {gen_optax.__version__})"
  )
  fig.tight_layout()
  fig.savefig(DOCS / "images" / "quickstart.png", dpi=100)


if __name__ == "__main__":
  main()
