"""How a big `--report` page behaves: size, write time, and in headless Chromium the load time, the time a
search and a sort take, and the frame times while scrolling.

    .venv/bin/python benchmarks/report_bench.py [--cards 10000] [--runs 3]

The page is written by the report writer itself (resnet_cli.outputs.report.HtmlReport) from records with real
thumbnails: the sample photos, each input a different crop, flip and tint of one of them, so no two thumbnails
are the same bytes; every 50th input is a failure. Only the network is left out (10,000 images through it
would measure classify, not the page). Chromium is the system's (`chromium`), driven by Playwright.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resnet_cli.core.records import Failure, Prediction, Success, View  # noqa: E402
from resnet_cli.outputs.report import THUMB, HtmlReport  # noqa: E402


def records(n: int):
    photos = [Image.open(p).convert("RGB") for p in sorted((ROOT / "sample_images").glob("*.*"))
              if p.suffix in (".jpg", ".png")]
    rng = random.Random(0)
    labels = [f"class {i}" for i in range(1000)]
    for i in range(n):
        if i % 50 == 49:
            yield Failure(f"photos/{i:05d}.jpg", "truncated", "image file is truncated")
            continue
        img = photos[i % len(photos)]
        w, h = img.size
        x0, y0 = rng.randrange(w // 5), rng.randrange(h // 5)
        view = img.crop((x0, y0, x0 + w * 4 // 5, y0 + h * 4 // 5))
        view = ImageOps.mirror(view) if i % 2 else view
        view.thumbnail((THUMB, THUMB))
        view = Image.blend(view, Image.new("RGB", view.size, (rng.randrange(256), 0, 0)), 0.1)
        probs = sorted((rng.random() for _ in range(5)), reverse=True)
        total = sum(probs) * 1.2
        topk = tuple(Prediction(r + 1, rng.randrange(1000), labels[rng.randrange(1000)], p / total)
                     for r, p in enumerate(probs))
        yield Success(f"photos/{i:05d}.jpg", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", 232, 224, topk,
                      view=View(view, (0, 0, view.width, view.height)))


def measure_page(path: Path, runs: int) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"load_s": [], "search_ms": [], "sort_ms": [], "scroll_frame_ms_p50": [],
                                   "scroll_frame_ms_p95": [], "js_heap_mb": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        for _ in range(runs):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            start = time.perf_counter()
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_function("document.getElementById('shown').textContent.startsWith('showing')")
            out["load_s"].append(time.perf_counter() - start)
            out["search_ms"].append(page.evaluate("""() => {
                const q = document.querySelector('input[type=search]');
                const t = performance.now();
                q.value = 'class 12'; q.dispatchEvent(new Event('input'));
                return new Promise(r => setTimeout(() => { document.body.offsetHeight;
                    r(performance.now() - t - 120); }, 120));   // minus the typing debounce
            }"""))
            page.evaluate("""() => { const q = document.querySelector('input[type=search]');
                q.value = ''; q.dispatchEvent(new Event('input')); }""")
            page.wait_for_timeout(300)
            out["sort_ms"].append(page.evaluate("""() => {
                const s = document.getElementById('sort'); const t = performance.now();
                s.value = 'desc'; s.dispatchEvent(new Event('change')); document.body.offsetHeight;
                return performance.now() - t; }"""))
            frames = page.evaluate("""() => new Promise(resolve => {
                window.scrollTo(0, 0); const times = []; let last = performance.now(); let n = 0;
                function step(now) { times.push(now - last); last = now; window.scrollBy(0, 600);
                    if (++n < 240) requestAnimationFrame(step); else resolve(times.slice(1)); }
                requestAnimationFrame(step); })""")
            frames.sort()
            out["scroll_frame_ms_p50"].append(frames[len(frames) // 2])
            out["scroll_frame_ms_p95"].append(frames[int(len(frames) * 0.95)])
            heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : 0")
            out["js_heap_mb"].append(heap / 2**20)
            page.close()
        browser.close()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        items = list(records(args.cards))
        start = time.perf_counter()
        page = HtmlReport(str(path), title="benchmark", subtitle=f"{args.cards} inputs")
        for rec in items:
            page.add(rec)
        page.close()
        write_s = time.perf_counter() - start
        size = path.stat().st_size
        result = measure_page(path, args.runs)
    print(f"{args.cards} cards: {size / 2**20:.1f} MiB ({size / args.cards / 1024:.1f} KiB a card), "
          f"written in {write_s:.1f} s ({1000 * write_s / args.cards:.2f} ms a card)")
    print(f"Chromium, median of {args.runs} loads: load {result['load_s']:.2f} s, search {result['search_ms']:.0f} ms, "
          f"sort {result['sort_ms']:.0f} ms, scrolling frame p50 {result['scroll_frame_ms_p50']:.1f} ms / "
          f"p95 {result['scroll_frame_ms_p95']:.1f} ms, JS heap {result['js_heap_mb']:.0f} MB")


if __name__ == "__main__":
    main()
