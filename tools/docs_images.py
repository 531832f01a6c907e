"""Regenerate the pictures in docs/explain.md and docs/report.md from the sample photos.

    .venv/bin/python tools/docs_images.py

Uses a seeded stand-in resnet50 checkpoint (tests/checkpoints.py; published weights cannot be downloaded on the
machine the docs were made on), the real command line, and the system's headless Chromium through Playwright
for the screenshots. Writes docs/images/explain-*.png and docs/images/report-*.png.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
IMAGES = ROOT / "docs" / "images"
CLI = [sys.executable, "-m", "resnet_cli"]


def run(*args: str) -> None:
    subprocess.run([*CLI, *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def screenshot(page_path: Path, out: Path, *, height: int, scroll_to: str | None = None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": height})
        page.goto(page_path.resolve().as_uri())
        if scroll_to:
            page.locator(scroll_to).scroll_into_view_if_needed()
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    from checkpoints import make_checkpoint

    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint("resnet50", tmp / "resnet50-seeded.pth")
        model = ["--arch", "resnet50", "--weights", str(ckpt), "-q", "-o", str(tmp / "out.jsonl")]

        # one photo, the three methods side by side
        strip = []
        for method in ("gradcam", "gradcam++", "layercam"):
            run("explain", "sample_images/chelsea.png", "--method", method, "--out", str(tmp / method), *model)
            strip.append(Image.open(tmp / method / "chelsea.png"))
        w, h = strip[0].size
        scale = 380 / w
        sheet = Image.new("RGB", (3 * 380 + 20, round(h * scale) + 28), "white")
        draw = ImageDraw.Draw(sheet)
        for i, (img, method) in enumerate(zip(strip, ("gradcam", "gradcam++", "layercam"))):
            sheet.paste(img.resize((380, round(h * scale)), Image.LANCZOS), (i * 390, 28))
            draw.text((i * 390 + 4, 8), method, fill="black")
        sheet.save(IMAGES / "explain-methods.png", optimize=True)

        # a whole-photo overlay, the crop's outside dimmed
        run("explain", "sample_images/grace_hopper.jpg", "--out", str(tmp / "gh"), *model)
        overlay = Image.open(tmp / "gh" / "grace_hopper.png")
        overlay.thumbnail((420, 420), Image.LANCZOS)
        overlay.save(IMAGES / "explain-overlay.png", optimize=True)

        # the explain report, and evaluate's
        run("explain", "sample_images", "--out", str(tmp / "all"), "--report", str(tmp / "explain.html"), *model)
        screenshot(tmp / "explain.html", IMAGES / "report-explain.png", height=760)
        data = tmp / "data"
        for photo, label in (("astronaut.png", "space shuttle"), ("camera.png", "reflex camera"),
                             ("chelsea.png", "tabby"), ("coffee.png", "espresso"), ("grace_hopper.jpg", "suit"),
                             ("rocket.jpg", "space shuttle")):
            (data / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "sample_images" / photo, data / label / photo)
        run("evaluate", str(data), "--arch", "resnet50", "--weights", str(ckpt), "-q", "--restrict",
            "-o", str(tmp / "eval.json"), "--report", str(tmp / "evaluate.html"))
        screenshot(tmp / "evaluate.html", IMAGES / "report-evaluate.png", height=980)
    print("wrote", *sorted(p.name for p in IMAGES.glob("*-*.png")))


if __name__ == "__main__":
    main()
