#!/usr/bin/env bash
# The test command: set up the machine (scripts/setup.sh), lint, then run every test (e2e included).
# Extra arguments go to pytest. Exits non-zero when lint or any test fails (or when none ran).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

scripts/setup.sh

# Offline Nix: no binary cache. No experimental feature is turned on here: nixforge (and the
# tests' own nix calls) turn on nix-command and flakes in their argv, as with a stock nix.conf.
export NIX_CONFIG='substituters ='

.venv/bin/ruff check .

status=0
.venv/bin/python -m pytest -q tests "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "run-tests.sh: pytest exited with status $status" >&2
fi
exit "$status"
