"""A page opened in a real browser (the `browser` fixture of tests/conftest.py: headless Chromium driven by
Playwright), for the tests of every command's --report: what it shows, logged and requested."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image


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
