#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
"${PYTHON:-python3}" -m pytest -ra --durations=20 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no test (exit code 5)" >&2
fi
exit "$status"
