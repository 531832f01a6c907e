"""A report opened in a real browser: headless Chromium (Debian's `chromium` package) driven by Playwright for
Python with the system browser's executable, for the tests of every command's --report. In CI (CI=true) the
`browser` fixture fails rather than skips when the browser is missing."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if executable is None or sync_playwright is None:
        missing = "the chromium package" if executable is None else "playwright (pip)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{missing} is not installed; the README's test setup installs it")
        pytest.skip(f"{missing} is not installed (the README's test setup installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """A report opened in the browser, with everything it logged and requested."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def cards(self, visible_only: bool = True) -> list[dict]:
        return self.page.eval_on_selector_all(
            "#cards article.card",
            "(cs, vis) => cs.filter(c => !vis || !c.hidden).map(c => ({...c.dataset, "
            "imgs: Array.from(c.querySelectorAll('img'), i => i.src)}))", visible_only)

    def close(self) -> None:
        self.page.close()


def thumbnail_sizes(src: str) -> tuple[int, int]:
    assert src.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size
