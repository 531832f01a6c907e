"""The page at / in headless Chromium (the `browser` fixture, tests/conftest.py): choose or drop images, see each
one's thumbnail and top-k bars, by keyboard too; nothing requested outside the server, nothing logged."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from checkpoints import PHOTOS

pytestmark = pytest.mark.timeout(180)


def answer(url: str, data: bytes, name: str) -> dict:
    return httpx.post(url + "/v1/classify", content=data, headers={"Content-Type": "application/octet-stream",
                                                                   "X-Filename": name}).json()


def test_the_page_classifies_chosen_and_dropped_images(browser, server, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    try:
        response = page.goto(server.url + "/")
        assert "default-src 'none'" in response.headers["content-security-policy"]
        page.wait_for_function("() => document.getElementById('model').textContent.includes('resnet18')",
                               timeout=30_000)

        # keyboard: Tab reaches the file chooser, then the top-k field
        focused = []
        for _ in range(6):
            page.keyboard.press("Tab")
            focused.append(page.evaluate("document.activeElement.id"))
        assert "files" in focused and focused.index("files") < focused.index("topk")

        page.set_input_files("#files", [str(PHOTOS[0]), str(broken)])
        page.wait_for_function("() => document.querySelectorAll('#results li.result[data-state=done]').length == 2",
                               timeout=60_000)
        # dropped on the drop zone: a File built in the page from the photo's bytes, as a drag from a file manager
        data = base64.b64encode(PHOTOS[2].read_bytes()).decode()
        page.evaluate("""([data, name]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: 'image/png'}));
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }""", [data, PHOTOS[2].name])
        page.wait_for_function("() => document.querySelectorAll('#results li.result[data-state=done]').length == 3",
                               timeout=60_000)

        cards = page.eval_on_selector_all("#results li.result", """cs => cs.map(c => ({...c.dataset,
            bars: c.querySelectorAll('.topk .bar i').length,
            widths: Array.from(c.querySelectorAll('.topk .bar i'), i => i.getBoundingClientRect().width),
            thumb: (c.querySelector('img') || {naturalWidth: 0}).naturalWidth,
            text: c.innerText}))""")
        assert [c["path"] for c in cards] == [PHOTOS[0].name, "broken.jpg", PHOTOS[2].name]
        for card, photo in ((cards[0], PHOTOS[0]), (cards[2], PHOTOS[2])):
            record = answer(server.url, photo.read_bytes(), photo.name)
            assert card["label"] == record["topk"][0]["label"]
            assert float(card["probability"]) == record["topk"][0]["probability"]
            assert card["bars"] == 5 and card["thumb"] > 0  # top-k bars and the thumbnail drawn
            assert card["widths"] == sorted(card["widths"], reverse=True) and card["widths"][0] > 0
        assert cards[1]["error"] == "truncated" and "label" not in cards[1] and "truncated" in cards[1]["text"]

        # nothing but this server and the page's own thumbnails (blob: URLs) was requested; nothing logged
        assert [u for u in requests if not u.startswith((server.url + "/", "blob:"))] == []
        # Chromium logs every 4xx answer to a fetch as "Failed to load resource": the broken file's 422 is the
        # one it must log (the API's contract for a bad image); nothing else may be logged.
        refused = "Failed to load resource: the server responded with a status of 422"
        assert [e for e in errors if not e.startswith(refused)] == []
        assert len(errors) == 1
    finally:
        page.close()


def test_the_page_is_served_with_its_csp(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert json.dumps("http") not in r.text and "https://" not in r.text  # no outside resource in the page
