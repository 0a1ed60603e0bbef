#!/usr/bin/env bash
# Prepare a Debian 12 machine for nixforge: system packages (Nix, OCI tools) and the repo's .venv.
# Idempotent: installs only what is missing; safe to run before every test run.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

packages=(nix-bin skopeo podman runc umoci busybox-static containerd apache2-utils openssl python3 python3-venv systemd
          chromium chromium-driver wrk)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$package")
    fi
done

if ((${#missing[@]} > 0)); then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    echo "setup.sh: installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# compat mode puts the checkout on sys.path, where Twisted finds twisted/plugins/nixforge_plugin.py.
.venv/bin/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat

# Regenerate Twisted's plugin cache so `twistd nixforge` is found.
.venv/bin/twistd --help >/dev/null
