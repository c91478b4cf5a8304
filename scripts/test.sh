#!/usr/bin/env bash
# Install if needed, then run the test suite. Extra arguments go to pytest (e.g. -k dit, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash install.sh
exec .venv/bin/python -m pytest -q tests "$@"
