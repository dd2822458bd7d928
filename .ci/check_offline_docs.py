"""Fails when the built HTML would load anything from the network.

Usage: ``python .ci/check_offline_docs.py docs/_build/html``.  Scripts,
stylesheets, images and fonts must come from the build folder, so that the
site (formulas included: MathJax is copied into ``_static``) reads offline.
Plain links (``<a href>``) may point anywhere.
"""

import re
import sys
from pathlib import Path

# Attributes that make a browser fetch: <script src>, <img src>, <link href>
# (stylesheets, fonts, icons), <iframe src>, and url(...) inside CSS.
FETCHED = re.compile(
  r"<(?:script|img|iframe|source)\b[^>]*\bsrc=[\"']((?:https?:)?//[^\"']+)"
  r"|<link\b[^>]*\bhref=[\"']((?:https?:)?//[^\"']+)"
  r"|url\(\s*[\"']?((?:https?:)?//[^)\"']+)",
  re.IGNORECASE,
)


def external_loads(root: Path) -> list[str]:
  """Every network fetch in the HTML and CSS under ``root``, as 'file: url'."""
  found = []
  for path in sorted(root.rglob("*")):
    if path.suffix not in {".html", ".css"} or "mathjax" in path.parts:
      continue
    for match in FETCHED.finditer(path.read_text(errors="replace")):
      url = next(group for group in match.groups() if group)
      found.append(f"{path.relative_to(root)}: {url}")
  return found


def main() -> int:
  """Prints each problem; exit status 1 if there is any."""
  root = Path(sys.argv[1])
  pages = [p for p in root.rglob("*.html") if "_static" not in p.parts]
  mathjax = root / "_static" / "mathjax" / "tex-chtml.js"
  problems = external_loads(root)
  if not pages:
    problems.append(f"no HTML pages in {root}")
  if not mathjax.is_file():
    problems.append(f"{mathjax} is missing: formulas would not render")
  for problem in problems:
    print(problem)
  print(f"{len(pages)} pages checked, {len(problems)} problem(s)")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
