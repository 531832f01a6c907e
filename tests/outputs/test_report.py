"""`--report FILE.html` in a real browser: headless Chromium (Debian's `chromium` package) driven by
Playwright for Python with the system browser's executable. The README's test setup installs both; in CI
(CI=true) these tests fail rather than skip when the browser is missing."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from checkpoints import PHOTOS


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


@pytest.fixture
def folder(photos_dir) -> Path:
    """The sample photos, a broken file in the middle, and a name that needs escaping in HTML."""
    folder = photos_dir
    (folder / "d_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    shutil.copy(PHOTOS[0], folder / 'e <b>"odd" & name.png')
    return folder


def test_classify_report_in_a_real_browser(browser, folder, checkpoint, cli, tmp_path):
    report = tmp_path / "report.html"
    result = cli(folder, "--arch", "resnet18", "--weights", checkpoint("resnet18"), "-f", "jsonl",
                 "--report", report)
    assert result.code == 1  # the broken file
    records = result.jsonl()
    page = Page(browser, report)
    try:
        # self-contained: nothing requested but the page itself (thumbnails are data: URLs), nothing logged
        assert page.errors == []
        assert [u for u in page.requests if not u.startswith("data:")] == [page.url]
        cards = page.cards()
        assert len(cards) == len(records) == len(PHOTOS) + 2
        assert [c["path"] for c in cards] == [r["path"] for r in records]  # input order, names intact
        for card, record in zip(cards, records):
            if "error" in record:
                assert card["error"] == record["error"]["type"] and "label" not in card
                assert "probability" not in card and card["imgs"] == []
            else:
                assert card["label"] == record["topk"][0]["label"]
                assert float(card["probability"]) == record["topk"][0]["probability"]
                (src,) = card["imgs"]
                assert max(thumbnail_sizes(src)) <= 256

        search = page.page.locator("input[type=search]")
        assert search.count() == 1
        label = records[2]["topk"][0]["label"]
        search.fill(label.upper())
        page.page.wait_for_timeout(400)
        expected = [r["path"] for r in records if "topk" in r and any(p["label"] == label for p in r["topk"])]
        assert [c["path"] for c in page.cards()] == expected
        search.fill("grace_")
        page.page.wait_for_timeout(400)
        assert [Path(c["path"]).name for c in page.cards()] == ["grace_hopper.jpg"]
        search.fill("")
        page.page.wait_for_timeout(400)
        assert len(page.cards()) == len(records)

        page.page.check("#failures")
        assert [c["path"] for c in page.cards()] == [r["path"] for r in records if "error" in r]
        page.page.uncheck("#failures")
        page.page.fill("#below", "20")
        below = [r["path"] for r in records if "topk" in r and r["topk"][0]["probability"] < 0.2]
        assert [c["path"] for c in page.cards()] == below and 0 < len(below) < len(records) - 1
        page.page.fill("#below", "")
        page.page.select_option("#sort", "desc")
        shown = [float(c["probability"]) for c in page.cards() if "probability" in c]
        assert shown == sorted(shown, reverse=True) and len(shown) == len(records) - 1
        assert "error" in page.cards()[-1]  # failures go last
        page.page.select_option("#sort", "input")
        assert [c["path"] for c in page.cards()] == [r["path"] for r in records]
        assert page.errors == []

        shot = tmp_path / "report.png"
        page.page.screenshot(path=str(shot))
        image = Image.open(shot).convert("RGB")
        assert image.size == (1280, 900)
        # the cards' photos are drawn: a screenshot of a blank or unstyled page has a handful of colours
        assert len(image.getcolors(1 << 20)) > 2000
        first = page.page.locator("#cards article.card img").first.bounding_box()
        assert first["width"] > 100 and first["height"] > 60
    finally:
        page.close()


def test_evaluate_report_shows_metrics_confusion_and_the_misclassified(browser, checkpoint, cli, tmp_path):
    data = tmp_path / "data"
    ckpt = checkpoint("resnet18")
    top = cli(*PHOTOS, "--arch", "resnet18", "--weights", ckpt, "-f", "jsonl").jsonl()
    # each photo filed under its own top-1 class, except the first two, filed under a class far from theirs
    classes = [r["topk"][0]["index"] for r in top]
    truth = [(c + 500) % 1000 for c in classes[:2]] + classes[2:]
    for photo, label in zip(PHOTOS, truth):
        (data / str(label)).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, data / str(label) / photo.name)
    report = tmp_path / "eval.html"
    result = cli("evaluate", data, "--arch", "resnet18", "--weights", ckpt, "-f", "json", "--report", report)
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    page = Page(browser, report)
    try:
        assert page.errors == []
        assert [u for u in page.requests if not u.startswith("data:")] == [page.url]
        cards = page.cards()
        assert len(cards) == len(PHOTOS)
        wrong = {m["path"] for m in summary["misclassified"]}
        assert {c["path"] for c in cards if c["correct"] == "false"} == wrong and len(wrong) >= 2
        metrics = page.page.inner_text("#summary table.metrics")
        assert f"{100 * summary['top1']:.1f}%" in metrics
        rows = page.page.locator("table.confusion tr").count()
        assert rows == 1 + len(summary["confusion"]["labels"])
        diagonal = page.page.eval_on_selector_all("table.confusion td.d", "ts => ts.map(t => t.textContent)")
        assert [int(t or 0) for t in diagonal] == [row[i] for i, row in enumerate(summary["confusion"]["matrix"])]
        gallery = page.page.eval_on_selector_all(
            ".gallery figure", "fs => fs.map(f => ({path: f.dataset.path, src: f.querySelector('img').src}))")
        assert {g["path"] for g in gallery} == wrong
        assert all(g["src"].startswith("data:image/jpeg") for g in gallery)
    finally:
        page.close()


def test_explain_report_shows_photo_and_overlay(browser, checkpoint, cli, tmp_path):
    report = tmp_path / "explain.html"
    result = cli("explain", *PHOTOS[:3], "--arch", "resnet18", "--weights", checkpoint("resnet18"),
                 "--out", tmp_path / "out", "--report", report, "-f", "jsonl")
    assert result.code == 0, result.stderr
    page = Page(browser, report)
    try:
        assert page.errors == []
        cards = page.cards()
        assert [c["path"] for c in cards] == [str(p) for p in PHOTOS[:3]]
        for card in cards:
            photo, overlay = card["imgs"]
            assert photo != overlay and max(thumbnail_sizes(overlay)) <= 256
    finally:
        page.close()


def test_a_run_that_fails_leaves_an_earlier_report_untouched(checkpoint, cli, tmp_path):
    report = tmp_path / "report.html"
    report.write_text("an earlier report")
    # a resnet18 checkpoint loaded as resnet50 fails once the run has started
    result = cli(*PHOTOS, "--arch", "resnet50", "--weights", checkpoint("resnet18"), "--report", report)
    assert result.code == 2 and "does not fit" in result.stderr
    assert report.read_text() == "an earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_report_must_be_an_html_file_that_can_be_written(cli, tmp_path):
    result = cli(*PHOTOS, "--report", tmp_path / "report.txt")
    assert result.code == 2 and ".html" in result.stderr
    result = cli(*PHOTOS, "--report", tmp_path / "missing" / "report.html")
    assert result.code == 2 and "does not exist" in result.stderr
