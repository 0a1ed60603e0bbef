"""contrib/nixforge.service is a valid unit with the promised hardening; contrib/nixforge.env names real settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nixforge.config import SETTINGS

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "contrib" / "nixforge.service"
ENV_FILE = REPO / "contrib" / "nixforge.env"
GUIDE = REPO / "docs" / "running-as-a-service.md"

HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service", "StateDirectory": "nixforge", "MemoryMax": "4G",
    "LimitNOFILE": "65536", "User": "nixforge", "SupplementaryGroups": "nix-users",
    "Environment": "NIX_REMOTE=daemon",
}


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every directive, in order."""
    section, found = "", []
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.append((section, key, value))
    return found


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit, installed where this checkout is: exit 0 and nothing said."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs Debian's systemd package", pytrace=False)
    text = UNIT.read_text().replace("/opt/nixforge", str(REPO))
    text = text.replace("/etc/nixforge/nixforge.env", str(ENV_FILE))
    unit = tmp_path / "nixforge.service"
    unit.write_text(text)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_the_unit_has_its_sections_and_hardening() -> None:
    found = directives(UNIT.read_text())
    assert {section for section, _, _ in found} == {"Unit", "Service", "Install"}
    unit = {(key, value) for section, key, value in found if section == "Unit"}
    assert {("After", "network-online.target"), ("Wants", "network-online.target"),
            ("Wants", "nix-daemon.socket")} <= unit
    service = [(key, value) for section, key, value in found if section == "Service"]
    for key, value in HARDENING.items():
        assert (key, value) in service, key
    assert ("WantedBy", "multi-user.target") in {(k, v) for s, k, v in found if s == "Install"}


def test_every_service_directive_says_what_it_is_for() -> None:
    """Each directive of [Service] has a comment on one of the lines just above it (or its group)."""
    lines = UNIT.read_text().splitlines()
    start = lines.index("[Service]")
    end = lines.index("[Install]")
    group_has_comment = False
    for line in lines[start + 1:end]:
        if not line:
            group_has_comment = False
        elif line.startswith("#"):
            group_has_comment = True
        else:
            assert group_has_comment, f"no comment for {line!r}"


def test_the_environment_file_sets_only_real_settings_with_valid_values() -> None:
    known = {setting.variable for setting in SETTINGS}
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            variable, _, value = line.partition("=")
            assert variable in known, variable
            values[variable] = value
    from nixforge.config import ForgeConfig

    ForgeConfig.from_sources(values)


def test_the_service_guide_shows_the_unit_and_the_environment_file_as_shipped() -> None:
    guide = GUIDE.read_text()
    for path in (UNIT, ENV_FILE):
        block = re.search(r"```ini\n# " + re.escape(path.name) + r" .*?\n(.*?)```", guide, re.S)
        assert block is not None, f"docs/running-as-a-service.md shows no ```ini block starting `# {path.name} …`"
        assert block.group(1) == path.read_text(), path.name
