"""report.html in a real browser (Debian's chromium through Playwright): it loads with no errors, fetches nothing,
every picture decodes and every section has content. Leaves a full-page screenshot to look at."""

import shutil
from pathlib import Path

import pytest

from selfsup.report.html import SECTIONS, write_report
from test_report import full_eval, make_run

CHROMIUM = Path("/usr/bin/chromium")
HOW = "run `make browser` (apt-get install chromium; pip install -e '.[test]' brings playwright)"


def chromium_or_skip() -> Path:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(f"playwright is not installed: {HOW}")
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: {HOW}")
    return CHROMIUM


def test_report_renders_in_chromium(tmp_path):
    browser_path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    run = make_run(tmp_path / "20260101-120000-simclr-synthetic", evaluation=full_eval())
    report = write_report(run)
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(browser_path), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 800})  # a laptop screen
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            assert page.title() == run.name
            for sid, title in SECTIONS:
                element = page.locator(f"section#{sid}")
                assert element.count() == 1, sid
                text = element.inner_text()
                assert text.startswith(title) and len(text.strip()) > len(title) + 10, sid
                assert element.bounding_box()["height"] > 40, sid
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            assert len(images) == 10
            assert all(complete and width > 0 for _, complete, width in images), images
            # Nothing wider than the window: no sideways scrolling on a laptop.
            assert page.evaluate("document.documentElement.scrollWidth") <= 1366
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, "/tmp/report-screenshot.png")
