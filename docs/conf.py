"""Sphinx configuration for the gen_optax documentation."""

import gen_optax

project = "gen_optax"
author = "gen_optax developers"
copyright = "2026, gen_optax developers (Apache-2.0)"
release = gen_optax.__version__
extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx-mathjax-offline",  # MathJax 3 copied into _static: formulas render offline
  "sphinx.ext.viewcode",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "gen_optax"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
