"""The Sphinx documentation builds with warnings treated as errors (what CI runs)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_sphinx_build_has_no_warning(tmp_path):
    pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install -e '.[docs]')")
    pytest.importorskip("myst_parser", reason="myst-parser is not installed (pip install -e '.[docs]')")
    # -E: no cached environment, so every page is read again; output in a temporary folder, not docs/_build.
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
                             str(DOCS), str(tmp_path / "html")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    html = tmp_path / "html"
    for page in ("index", "quickstart", "configuration", "steps", "cluster", "replay", "troubleshooting",
                 "report", "alignment", "architecture", "api"):
        assert (html / f"{page}.html").is_file(), page
    # autodoc really imported the modules it documents (an import failure is only a warning otherwise).
    assert "DaskExecutor" in (html / "api.html").read_text()
    shutil.rmtree(tmp_path, ignore_errors=True)
