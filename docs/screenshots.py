r"""Screenshots of chosen pages of the built docs, for a person to look at.

Opens each page from disk in headless Chromium (no server, no network: what
an offline reader sees) and saves a PNG.  Needs Chromium (Debian: ``apt
install chromium``) and a built site::

  sphinx-build -b html docs docs/_build/html
  python docs/screenshots.py            # -> docs/_build/screenshots/*.png

Look for formulas typeset (not raw ``\[ ... \]``), figures shown, tables
laid out.
"""

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

DOCS = Path(__file__).parent
PAGES = ("index", "quickstart", "method", "modes", "benchmarks", "api", "howto/nnx")
# Flags of a quiet offline start: no first-run UI, no background connections
# (refused on a closed network), no GPU.
FLAGS = (
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--hide-scrollbars",
  # MathJax typesets after the page loads: give its scripts time to run.
  "--virtual-time-budget=10000",
)


def screenshot(browser: str, page: Path, out: Path, width: int, height: int) -> None:
  """Saves ``page`` as rendered in a window of ``width`` × ``height`` to ``out``."""
  with tempfile.TemporaryDirectory() as profile:
    subprocess.run(
      [
        browser,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        f"--screenshot={out}",
        page.resolve().as_uri(),
      ],
      check=True,
      capture_output=True,
      timeout=120,
    )


def main() -> None:
  """Screenshots of ``--pages`` into ``--out``."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--html", type=Path, default=DOCS / "_build" / "html")
  parser.add_argument("--out", type=Path, default=DOCS / "_build" / "screenshots")
  parser.add_argument("--pages", nargs="+", default=list(PAGES))
  parser.add_argument("--size", type=int, nargs=2, default=(1280, 2000))
  args = parser.parse_args()
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if browser is None:
    raise SystemExit("chromium not found (Debian: apt install chromium)")
  args.out.mkdir(parents=True, exist_ok=True)
  for name in args.pages:
    page = args.html / f"{name}.html"
    if not page.is_file():
      raise SystemExit(f"{page} not found: build the docs first")
    out = args.out / f"{name.replace('/', '-')}.png"
    screenshot(browser, page, out, *args.size)
    print(f"{page} -> {out}")


if __name__ == "__main__":
  main()
