#!/usr/bin/env bash
# Quick start: set up the machine, then run nixforge in the foreground on the demo flake (works offline).
# Pull from it with: podman run --tls-verify=false localhost:${FLASK_PORT:-5000}/hello:latest
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

"$repo/scripts/setup.sh"

data_dir=${NIXFORGE_DATA_DIR:-$HOME/.local/share/nixforge}
flake_dir=$data_dir/demo-flake
mkdir -p "$flake_dir"
cp "$repo"/examples/demo-flake/*.nix "$flake_dir/"
cp /bin/busybox "$flake_dir/busybox"

# Offline: no binary cache. nixforge turns on the Nix features it needs (nix-command, flakes) itself.
if [ -z "${NIX_CONFIG:-}" ]; then
    export NIX_CONFIG='substituters ='
fi

echo "quickstart.sh: serving the demo flake copied to $flake_dir on port ${FLASK_PORT:-5000}; Ctrl-C stops it" >&2

exec "$repo/.venv/bin/twistd" -n --pidfile= nixforge \
    --flake "path:$flake_dir" --port "${FLASK_PORT:-5000}"
