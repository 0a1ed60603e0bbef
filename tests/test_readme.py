"""README and docs/: the newcomer's commands, links that lead somewhere, the settings table in step with the code."""

import re
import struct
from pathlib import Path

from nixforge.config import SETTINGS
from nixforge.tap import Options

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
SETTINGS_DOC = DOCS / "settings.md"
SCREENSHOT = DOCS / "screenshot.png"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def readme_settings() -> dict[str, tuple[str, str]]:
    """Variable → (option cell, default cell) from the settings table in docs/settings.md."""
    rows = {}
    for line in SETTINGS_DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `([A-Z0-9_]+)` \| (.*?) \| (.*?) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of a Markdown file (outside code blocks)."""
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def test_every_setting_is_in_the_settings_doc_with_its_option_and_default() -> None:
    rows = readme_settings()
    assert set(rows) == {setting.variable for setting in SETTINGS}
    for setting in SETTINGS:
        option_cell, default_cell = rows[setting.variable]
        if setting.option is not None:
            assert f"`--{setting.option}`" in option_cell, setting.variable
        if setting.default:
            assert default_cell == f"`{setting.default}`", setting.variable


def test_every_option_is_in_the_help() -> None:
    help_text = str(Options())
    for setting in SETTINGS:
        if setting.option is not None:
            assert f"--{setting.option}=" in help_text
            assert setting.variable in help_text.replace("\n", " ")
    assert "--nix-option=" in help_text and "--port=" in help_text


def test_the_readme_keeps_the_run_and_test_commands() -> None:
    """The two commands a newcomer needs, as scripts that exist (.ci/run runs the test one)."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", text, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["./scripts/quickstart.sh", "./scripts/run-tests.sh"]
    for command in commands:
        assert (REPO / command).is_file()
    assert "scripts/run-tests.sh" in (REPO / ".ci" / "run").read_text()
    assert "podman pull --tls-verify=false localhost:5000/hello:latest" in text  # a first pull


def test_the_readme_is_short_and_links_every_doc() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 150
    linked = {target.split("#")[0] for target in LINK.findall(text)}
    for doc in DOCS.glob("*.md"):
        assert f"docs/{doc.name}" in linked, doc.name


def test_every_relative_link_leads_to_a_file_and_heading_that_exist() -> None:
    for page in (README, *DOCS.glob("*.md")):
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # https: and the like
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            assert destination.exists(), (page.name, target)
            if anchor:
                assert anchor in anchors(destination), (page.name, target)


def test_the_readme_shows_a_small_screenshot_of_the_start_page() -> None:
    assert "](docs/screenshot.png)" in README.read_text(encoding="utf-8")
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
    width, height = struct.unpack(">II", data[16:24])
    assert 600 <= width <= 1600 and 400 <= height <= 1200
