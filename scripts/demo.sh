#!/usr/bin/env bash
# The demo command of the README: installs what is missing, simulates a MUSE observing run and reduces it
# through the real ESO recipes. Extra arguments go to `pymusepipe demo` (e.g. --workdir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PYMUSEPIPE_EXTRAS=test bash scripts/setup.sh
exec pymusepipe demo "$@"
