"""Browser tests: the real backend (`xal serve --no-worker`) on a free port, with the
session's PostgreSQL database and a real Celery worker, driven through Debian's Chromium
by Playwright. No browser is downloaded: Playwright launches /usr/bin/chromium.

Where Playwright or Chromium is missing the tests skip; under CI=true they fail."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend.testing import ROOT, stop
from tests.conftest import free_port, require

CHROMIUM = Path(os.environ.get("XAL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "test-output" / "screenshots"


def _require_browser() -> None:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright (pip install 'playwright>=1.40')")
    if not CHROMIUM.is_file():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install -y chromium, or set XAL_CHROMIUM)")
    require(not missing, "browser tests need " + " and ".join(missing))


@pytest.fixture(scope="session")
def live_server(service_env, tmp_path_factory):
    """The API and UI as users get them: `python -m backend.cli serve --no-worker` on a free port."""
    _require_browser()
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--no-worker", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **service_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            raise RuntimeError(f"the server did not start; its log:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.3)
    yield url
    stop(process)
    log.close()
    sys.stderr.write(f"\n[server log: {log_path}]\n")


@pytest.fixture(scope="session")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# Chromium logs a violation of the Content-Security-Policy to the console; the event says it too
_REPORT_CSP_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (event) =>
  console.error(`CSP violation: ${event.violatedDirective} ${event.blockedURI}`));"""


def watch_for_errors(page, errors: list[str]) -> None:
    """Collects into `errors` the page's uncaught errors and its Content-Security-Policy violations."""
    page.add_init_script(_REPORT_CSP_VIOLATIONS)
    page.on("pageerror", lambda error: errors.append(str(error)))

    def console(message) -> None:
        if "CSP violation" in message.text or "Content Security Policy" in message.text:
            errors.append(message.text)

    page.on("console", console)


@pytest.fixture
def screenshot():
    """screenshot(page, name): saves test-output/screenshots/<name>.png (the whole page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
