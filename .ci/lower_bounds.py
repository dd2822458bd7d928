"""Prints the oldest versions pyproject.toml allows, as pip requirements.

The library's dependencies and its ``test`` extra, each ``name>=X`` as
``name==X``: CI installs exactly these in a fresh environment and runs the
default tests, so that every lower bound pyproject.toml declares is one that
passes.  Linters (ruff, mypy) are left out: the default tests do not run them.
"""

import re
import tomllib
from pathlib import Path

LINTERS = {"ruff", "mypy"}


def main() -> None:
  """Prints ``name==X`` for every ``name>=X`` of the dependencies and tests."""
  pyproject = Path(__file__).parent.parent / "pyproject.toml"
  project = tomllib.loads(pyproject.read_text())["project"]
  pins = []
  for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,\s]+).*", spec)
    if match is None:
      raise SystemExit(f"no lower bound to pin in {spec!r}")
    name, version = match.groups()
    if name not in LINTERS:
      pins.append(f"{name}=={version}")
  print(" ".join(pins))


if __name__ == "__main__":
  main()
