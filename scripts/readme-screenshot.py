#!/usr/bin/env python3
"""Make docs/screenshot.png: the page at `/` of a real nixforge serving the demo flake, in headless Chromium."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from e2e_support import ForgeProcess, prepare_flake  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402


def main() -> None:
    """Serve the demo flake, pull two images then photograph `/` at 1000x800."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        flake = prepare_flake(REPO / "examples" / "demo-flake", work / "demo-flake", "screenshot")
        forge = ForgeProcess(flake_ref=f"path:{flake}", data_dir=work / "data", work_dir=work / "forge",
                             log_level="INFO").start()
        try:
            for name in ("hello", "greet"):
                assert forge.manifest(name).status == 200
            assert forge.get("/v2/_catalog").status == 200
            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--window-size=1000,800", "--hide-scrollbars", f"--user-data-dir={work / 'profile'}"):
                options.add_argument(argument)
            driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
            try:
                driver.get(forge.url("/"))
                driver.save_screenshot(str(REPO / "docs" / "screenshot.png"))
            finally:
                driver.quit()
        finally:
            forge.stop()


if __name__ == "__main__":
    main()
