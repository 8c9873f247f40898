"""Shared pytest configuration.

Tests marked ``esorex`` run the real ESO MUSE recipes; they are skipped, with the reason, when the
``esorex`` executable or the MUSE recipes are not installed.
"""
import shutil
import signal
import subprocess
import tempfile

import pytest

# A test run started in the background by a non-interactive shell (``cmd &``, nohup) inherits SIGINT ignored, and
# so would every command it starts: the tests of Ctrl-C need it delivered as from a terminal. A Python handler
# (unlike SIG_IGN) is reset to the default action in the commands the tests start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _muse_recipes_available():
    if shutil.which("esorex") is None:
        return False, "esorex is not installed (apt-get install esorex cpl-plugin-muse)"
    try:
        # esorex writes esorex.log into its working folder: keep it out of the checkout.
        with tempfile.TemporaryDirectory() as scratch:
            listing = subprocess.run(["esorex", "--recipes"], capture_output=True, text=True, timeout=60,
                                     cwd=scratch).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"esorex --recipes failed: {exc}"
    if "muse_bias" not in listing:
        return False, "esorex is installed but the MUSE recipes are not (apt-get install cpl-plugin-muse)"
    return True, ""


def pytest_collection_modifyitems(config, items):
    if not any("esorex" in item.keywords for item in items):
        return
    available, reason = _muse_recipes_available()
    if available:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "esorex" in item.keywords:
            item.add_marker(skip)
