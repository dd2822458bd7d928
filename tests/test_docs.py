"""Every Python block of the how-to pages runs, page by page, as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"
# The how-to pages and the quickstart: each page's blocks run as one script.
HOWTO = [*sorted(DOCS.glob("howto/*.md")), DOCS / "quickstart.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_every_howto_page_has_code():
  assert {p.stem for p in HOWTO} >= {
    "nnx",
    "linen",
    "composition",
    "accumulation",
    "sharding",
    "multihost",
    "checkpointing",
    "quickstart",
  }
  for page in HOWTO:
    assert BLOCK.findall(page.read_text()), page


@pytest.mark.parametrize(
  "page",
  # The sharding page also runs on 8 devices in the slow tier (tests/multidevice).
  [
    pytest.param(p, marks=pytest.mark.slow) if p.stem == "sharding" else p
    for p in HOWTO
  ],
  ids=lambda p: p.stem,
)
def test_howto_code_runs(page):
  namespace: dict = {"__name__": f"howto_{page.stem}"}
  for block in BLOCK.findall(page.read_text()):
    exec(compile(block, str(page), "exec"), namespace)
