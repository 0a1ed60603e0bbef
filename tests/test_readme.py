"""The README's settings table, `--help` and the code agree on every setting."""

import re
from pathlib import Path

from nixforge.config import SETTINGS
from nixforge.tap import Options

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"


def readme_settings() -> dict[str, tuple[str, str]]:
    """Variable → (option cell, default cell) from the settings tables of the README and docs/."""
    rows = {}
    text = "\n".join(path.read_text(encoding="utf-8") for path in [README, *sorted(DOCS.glob("*.md"))])
    for line in text.splitlines():
        match = re.match(r"\| `([A-Z_]+)` \| (.*?) \| (.*?) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_every_setting_is_in_the_readme_with_its_option_and_default() -> None:
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
