#!/usr/bin/env bash
# The test command: set up the machine (scripts/setup.sh), lint, then run every test (e2e included).
# Extra arguments go to pytest. Exits non-zero when lint or any test fails (or when none ran).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

scripts/setup.sh

# Offline Nix: no binary cache, flakes enabled.
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes'

.venv/bin/ruff check .

status=0
.venv/bin/python -m pytest -q tests "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "run-tests.sh: pytest exited with status $status" >&2
fi
exit "$status"
