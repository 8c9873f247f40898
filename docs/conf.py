"""Sphinx configuration of the pymusepipe documentation (``sphinx-build -W -b html docs docs/_build/html``).

The Markdown notes of docs/ (architecture, engine, simulator, alignment) are read through myst_parser.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # autodoc imports pymusepipe from the checkout

from pymusepipe.version import __version__  # noqa: E402

project = "pymusepipe"
author = "pymusepipe developers"
copyright = "pymusepipe developers, MIT License"
version = release = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# numpy-style docstrings; no type hints repeated from signatures.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
# Heavy optional imports are not needed to document the modules that import them lazily.
autodoc_mock_imports = ["mpdaf"]

# Anchors for Markdown headings, so pages can link to sections of the notes.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"pymusepipe {release}"
