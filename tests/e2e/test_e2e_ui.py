"""The web pages in a real browser (Debian's chromium through selenium) against a real `twistd -n nixforge`."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import NIX_RUN, OCI_INDEX, ForgeProcess, http_request, require_tool, run_tool, wait_until
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
)
USER, PASSWORD = "carol", "ui-pw-1"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def chromium(user_data: Path, authorization: str | None = None) -> WebDriver:
    """Headless Chromium driven by the system chromedriver (Selenium Manager never asked to fetch anything)."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not tool.exists():
            pytest.fail(f"{tool} is missing: apt-get install chromium chromium-driver (scripts/setup.sh)",
                        pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (*CHROMIUM_ARGS, f"--user-data-dir={user_data}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    if authorization is not None:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": authorization}})
    return driver


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    monkeypatch.setenv("SE_OFFLINE", "true")
    driver = chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def ui_forge(tmp_path_factory: pytest.TempPathFactory, flake_ref: str) -> Iterator[ForgeProcess]:
    """One registry for the module: hello built, and the catalog evaluated (the pages never evaluate it)."""
    work_dir = tmp_path_factory.mktemp("ui-forge")
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=work_dir / "data", work_dir=work_dir).start()  # DEBUG
    assert forge.manifest("hello").status == 200
    assert "hello" in forge.get("/v2/_catalog").json()["repositories"]
    yield forge
    forge.stop()


def screenshot(driver: WebDriver, path: Path) -> None:
    """Save the page as a PNG (the whole page's height) for a person to look at."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(600, min(int(height) + 40, 4000)))
    assert driver.save_screenshot(str(path)), path
    driver.set_window_size(1280, 1000)


def console_errors(driver: WebDriver) -> list[str]:
    """CSP violations and script errors the page logged."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_start_page_lists_the_catalog_with_pull_commands(ui_forge: ForgeProcess, browser: WebDriver,
                                                               tmp_path: Path) -> None:
    """`/` shows the flake's packages, each with `podman pull <host>/<name>:latest` and a copy button.

    Reading the pages starts no Nix process; dark by the reader's preference; narrow without overflow.
    """
    ui_forge.sync_log()
    nix_runs = len(ui_forge.matching_lines(NIX_RUN))
    browser.get(ui_forge.url("/"))
    screenshot(browser, tmp_path / "start.png")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.catalog tbody tr")
    commands = {row.find_element(By.CSS_SELECTOR, "a").text: row.find_element(By.CSS_SELECTOR, "code.pull").text
                for row in rows}
    host = f"127.0.0.1:{ui_forge.port}"
    for name in ("hello", "chatty", "broken", "drip", "applications/app1/web"):
        assert commands.get(name) == f"podman pull {host}/{name}:latest", commands
    buttons = browser.find_elements(By.CSS_SELECTOR, "button.copy")
    assert buttons and all(button.is_displayed() for button in buttons)  # the script showed them
    assert buttons[0].get_attribute("data-copy") == commands[rows[0].find_element(By.CSS_SELECTOR, "a").text]
    assert "path:<host path>" in browser.find_element(By.TAG_NAME, "main").text  # the flake, redacted
    assert "hello:latest" in browser.find_element(By.ID, "stored-heading").find_element(By.XPATH, "..").text
    assert console_errors(browser) == []
    assets = browser.execute_script(
        "return [...document.querySelectorAll('[src], link[href]')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))")
    assert assets and all(asset.startswith("/ui/-/static/") for asset in assets), assets  # nothing from elsewhere
    light = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    browser.set_window_size(400, 900)
    browser.get(ui_forge.url("/ui/hello"))
    browser.get(ui_forge.url("/"))
    assert browser.save_screenshot(str(tmp_path / "start-dark-narrow.png"))
    assert (light, browser.execute_script("return getComputedStyle(document.body).backgroundColor")) == (
        "rgb(255, 255, 255)", "rgb(15, 18, 22)")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    ui_forge.sync_log()
    assert len(ui_forge.matching_lines(NIX_RUN)) == nix_runs, ui_forge.log_tail()
    answer = http_request(ui_forge.url("/"))
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["content-type"] == "text/html; charset=utf-8"


def test_a_click_leads_to_the_package_page_with_the_served_digest(ui_forge: ForgeProcess, browser: WebDriver,
                                                                   tmp_path: Path) -> None:
    """Following `hello` from `/` shows the digest the manifest endpoint answers, layers and the SBOM."""
    browser.get(ui_forge.url("/"))
    browser.find_element(By.LINK_TEXT, "hello").click()
    assert wait_until(lambda: browser.current_url.endswith("/ui/hello"), timeout=30)
    screenshot(browser, tmp_path / "package-hello.png")
    manifest = ui_forge.manifest("hello")
    shown = browser.find_element(By.CSS_SELECTOR, "code.oci-digest").text
    assert shown == manifest.headers["docker-content-digest"]
    layers = browser.find_elements(By.CSS_SELECTOR, "table.layers tbody tr")
    assert layers
    paths = [code.text for code in browser.find_elements(By.CSS_SELECTOR, "ul.paths code")]
    assert any(re.fullmatch(r"/nix/store/[a-z0-9]{32}-hello", path) for path in paths), paths
    sbom = browser.find_element(By.PARTIAL_LINK_TEXT, "download (SPDX JSON)").get_attribute("href")
    assert http_request(sbom).json()["spdxVersion"] == "SPDX-2.3"
    assert console_errors(browser) == []


def test_a_running_build_page_follows_the_log_live(ui_forge: ForgeProcess, browser: WebDriver,
                                                   tmp_path: Path) -> None:
    """drip prints a line a second: its page shows lines as they come (no reload), then the outcome."""
    pulled: list[int] = []
    pull = threading.Thread(target=lambda: pulled.append(ui_forge.get("/v2/drip/manifests/latest").status))
    pull.start()
    builds: list[dict] = []

    def running() -> bool:
        builds[:] = [b for b in ui_forge.get("/-/builds").json()["builds"] if b["name"] == "drip"]
        return bool(builds) and builds[0]["state"] == "running"

    assert wait_until(running, timeout=120, interval=0.1)
    browser.get(ui_forge.url("/"))
    browser.find_element(By.CSS_SELECTOR, f"a[href='/ui/builds/{builds[0]['id']}']").click()
    log = browser.find_element(By.ID, "log")
    assert log.get_attribute("data-follow") == f"/-/builds/{builds[0]['id']}/log"
    assert browser.find_element(By.ID, "build-state").text == "running"
    assert wait_until(lambda: "nixforge-drip line 2" in log.text, timeout=60)
    early = log.text
    without_scripts = http_request(ui_forge.url(f"/ui/builds/{builds[0]['id']}")).body.decode()
    assert "nixforge-drip line 1" in without_scripts  # the log so far is in the page itself
    assert "nixforge-drip line 8" not in early and pull.is_alive()
    screenshot(browser, tmp_path / "build-running.png")
    assert wait_until(lambda: browser.find_element(By.ID, "build-state").text == "success", timeout=120)
    pull.join(120)
    assert pulled == [200]
    final = log.text  # the same element: the page was never reloaded
    assert "nixforge-drip line 8" in final and final.rstrip().endswith("[nixforge: build success]")
    assert browser.find_element(By.ID, "build-finished").text != "-"
    screenshot(browser, tmp_path / "build-done.png")
    assert console_errors(browser) == []


def test_a_failed_build_page_shows_the_reason_without_host_paths(ui_forge: ForgeProcess, browser: WebDriver,
                                                                 tmp_path: Path) -> None:
    """broken's page says why it failed; the flake's directory on this host appears nowhere."""
    answer = ui_forge.get("/v2/broken/manifests/latest")
    assert answer.status == 500
    build_id = answer.json()["errors"][0]["detail"]["build"]
    browser.get(ui_forge.url("/"))
    browser.find_element(By.CSS_SELECTOR, f"a[href='/ui/builds/{build_id}']").click()
    screenshot(browser, tmp_path / "build-failed.png")
    assert browser.find_element(By.ID, "build-state").text == "failure"
    reason = browser.find_element(By.ID, "build-error").text
    assert "nix build failed" in reason and "failed with exit code 1" in reason
    page = browser.page_source
    flake_dir = ui_forge.flake_ref.removeprefix("path:")
    assert flake_dir not in page and str(ui_forge.data_dir) not in page
    assert "nixforge-test: deliberate failure" in browser.find_element(By.ID, "log").text
    assert console_errors(browser) == []


def test_markup_in_a_build_log_is_shown_as_text_and_never_runs(ui_forge: ForgeProcess, browser: WebDriver,
                                                               tmp_path: Path) -> None:
    """tagsoup's log prints <script> and <img onerror=…>: the page shows them, runs neither, loads no image."""
    answer = ui_forge.get("/v2/tagsoup/manifests/latest")
    assert answer.status == 500
    build_id = answer.json()["errors"][0]["detail"]["build"]
    browser.get(ui_forge.url(f"/ui/builds/{build_id}"))
    screenshot(browser, tmp_path / "build-tagsoup.png")
    text = browser.find_element(By.ID, "log").text
    assert "<script>document.title='pwned-by-script'" in text
    assert "<img src=x onerror=\"document.title='pwned-by-img'\">" in text
    assert "pwned" not in browser.title and browser.title.startswith("Build of tagsoup:latest")
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    assert browser.execute_script("return document.scripts.length") == 1  # ui.js alone


def test_an_index_page_shows_each_platform_with_its_layers(tmp_path: Path, flake_ref: str,
                                                           browser: WebDriver) -> None:
    """With two systems, `/ui/hello` shows the index's digest and one image per platform, each with layers."""
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=tmp_path / "data", work_dir=tmp_path / "forge",
                         log_level="INFO", extra_args=["--systems", "x86_64-linux,aarch64-linux",
                                                       "--nix-option", "extra-platforms=aarch64-linux"]).start()
    try:
        answer = forge.manifest("hello", accept=OCI_INDEX)
        browser.get(forge.url("/ui/hello"))
        screenshot(browser, tmp_path / "package-index.png")
        assert browser.find_element(By.CSS_SELECTOR, "code.oci-digest").text == answer.headers["docker-content-digest"]
        sections = browser.find_elements(By.CSS_SELECTOR, "section.image")
        expected = {(entry["digest"], "/".join(entry["platform"][key] for key in ("os", "architecture", "variant")
                                                if key in entry["platform"]))
                    for entry in answer.json()["manifests"]}
        shown = {(section.find_element(By.CSS_SELECTOR, "h3 code").text,
                  section.find_element(By.CSS_SELECTOR, ".platform").text.strip("()")) for section in sections}
        assert shown == expected == {(d, p) for d, p in expected if p in ("linux/amd64", "linux/arm64/v8")}
        for section in sections:
            assert section.find_elements(By.CSS_SELECTOR, "table.layers tbody tr")
    finally:
        forge.stop()


def test_with_authentication_on_the_pages_need_credentials(tmp_path: Path, flake_ref: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With --htpasswd: every page and asset answers 401 without credentials, and renders with them."""
    password_file = tmp_path / "htpasswd"
    run_tool([require_tool("htpasswd"), "-c", "-bB", str(password_file), USER, PASSWORD])
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=tmp_path / "data", work_dir=tmp_path / "forge",
                         log_level="INFO", extra_args=["--htpasswd", str(password_file)]).start()
    try:
        for path in ("/", "/ui/hello", "/ui/builds/0123abcd", "/ui/-/static/ui.js", "/ui/-/static/ui.css"):
            answer = http_request(forge.url(path))
            assert answer.status == 401, (path, answer.status)
            assert b"<html" not in answer.body and b"podman pull" not in answer.body, path
        token = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        assert http_request(forge.url("/"), headers={"Authorization": token}).status == 200
        monkeypatch.setenv("SE_OFFLINE", "true")
        driver = chromium(tmp_path / "profile", authorization=token)
        try:
            driver.get(forge.url("/"))
            screenshot(driver, tmp_path / "start-authenticated.png")
            assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Images from")
            assert driver.find_elements(By.CSS_SELECTOR, "button.copy") == [] or all(
                button.is_displayed() for button in driver.find_elements(By.CSS_SELECTOR, "button.copy"))
            assert console_errors(driver) == []  # the stylesheet and script loaded with the credentials
        finally:
            driver.quit()
    finally:
        forge.stop()


def test_the_pages_are_off_with_nixforge_ui_false(tmp_path: Path, flake_ref: str) -> None:
    """NIXFORGE_UI=false: `/` and `/ui/…` are JSON 404s; the API still answers."""
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=tmp_path / "data", work_dir=tmp_path / "forge",
                         log_level="INFO", extra_env={"NIXFORGE_UI": "false"}).start()
    try:
        for path in ("/", "/ui/hello", "/ui/-/static/ui.js"):
            answer = http_request(forge.url(path))
            assert answer.status == 404 and answer.error_codes() == ["UNSUPPORTED"], path
        assert http_request(forge.url("/v2/")).status == 200
    finally:
        forge.stop()

