#!/usr/bin/env bash
# Set-up shared by scripts/demo.sh and scripts/test.sh: the real ESO MUSE pipeline and this package.
set -euo pipefail
cd "$(dirname "$0")/.."

have_muse_recipes() {
    command -v esorex >/dev/null 2>&1 && esorex --recipes 2>/dev/null | grep -q muse_bias
}

if ! have_muse_recipes; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing the ESO MUSE pipeline (Debian packages esorex, cpl-plugin-muse, likwid)..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq esorex cpl-plugin-muse likwid >/dev/null
    else
        echo "The ESO MUSE pipeline is missing. Install it as root with:" >&2
        echo "    apt-get update && apt-get install -y esorex cpl-plugin-muse likwid" >&2
        echo "(or ESO's install_esoreflex kit on other systems), then run this script again." >&2
        exit 1
    fi
fi

# Headless Chromium for tests/test_report_browser.py (the report pages in a real browser); optional: the test is
# skipped, with the reason, where it is missing.
if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing headless Chromium for the report's browser test (Debian packages chromium, chromium-driver)..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
            >/dev/null; } || echo "Chromium could not be installed: the browser test will be skipped." >&2
    fi
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[${PYMUSEPIPE_EXTRAS:-test}]"
