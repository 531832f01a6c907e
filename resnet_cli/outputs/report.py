"""`--report FILE.html`: one self-contained page to browse a run's results (classify, explain, evaluate).

Everything is inside the file: thumbnails as JPEG data URLs (at most THUMB px on the longer side), the style
and the script inline, no font, no CDN, no request of any kind, so it opens from any folder, offline, and can
be mailed as it is. The cards are written while the run goes (to a spool file beside the target) and the page
is assembled and renamed into place at the end, so memory stays flat and a failed run leaves an earlier report
untouched.

The DOM is a contract (docs/report.md), for scripts as for tests:
- each input is one `article.card` in `#cards` (inside its sections), in input order, with `data-path` (the path as the table prints
  it), and either `data-label` (top-1 label) and `data-probability` (top-1 probability, a JSON number), or
  `data-error` (the failure type) for a failure; evaluate adds `data-true` (the true label) and
  `data-correct` ("true"/"false").
- the search box is the page's one `input[type=search]`; it filters by path or by any of a card's labels.

Big runs: the cards come in sections of SECTION, each its own grid with CSS `content-visibility: auto`, so
the browser lays out and paints only the sections on screen (one grid of 10,000 cards is laid out whole at
every change: 200 ms a frame while scrolling, measured) and decodes images lazily; filters and sorting touch
each card once. docs/report.md has the size and
load time of a 10,000-image page.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import shutil
import tempfile

from ..core.console import printable
from ..core.records import Failure, Record, Success
from ..core.files import AtomicFile

THUMB = 256  # longest side of a thumbnail (and the size of the picture decoders keep for a report)
QUALITY = 75  # JPEG quality of thumbnails
SECTION = 48  # cards per section: the unit the browser lays out, paints or skips (see "Big runs" above)


def _shown(text: str) -> str:
    """Text from the model or the user (a label, a path) as HTML: control and bidi-control characters escaped
    (printable), and isolated in <bdi>, so right-to-left text stays inside its box and never reorders the page."""
    return f"<bdi>{html.escape(printable(text))}</bdi>"


def _thumbnail(image) -> str:
    """A data URL of a JPEG at most THUMB px on its longer side."""
    from PIL import Image

    img = image.convert("RGB")
    if max(img.size) > THUMB:
        img = img.copy()
        img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _picture_of(record: Record):
    """The record's picture: the one the decoder kept, else the local file read again (the Ray engine keeps
    none), else None (a URL is not fetched twice; a failure has nothing to show)."""
    if isinstance(record, Success) and record.view is not None:
        return record.view.image
    if isinstance(record, Failure) or "://" in record.path or record.path == "-":
        return None
    try:
        from ..inputs.images import open_local

        return open_local(record.path, draft_min_side=THUMB)
    except Exception:
        return None


def _attr(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


class HtmlReport:
    """Cards in, one page out. `add` a record per input in input order; `close(ok, summary=...)` assembles the
    page (summary HTML first, then the controls and the cards) and renames it into place, or, with ok False,
    leaves nothing and an earlier file as it was."""

    def __init__(self, path: str, *, title: str, subtitle: str = "") -> None:
        self.path = path
        self.title = title
        self.subtitle = subtitle
        self.count = 0
        self.failed = 0
        self.ids: dict[str, str] = {}  # path -> card id, for evaluate's gallery
        folder = os.path.dirname(os.path.abspath(path))
        fd, self._spool_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".cards", dir=folder)
        self._spool = os.fdopen(fd, "w", encoding="utf-8")

    def add(self, record: Record, *, true_label: str | None = None) -> None:
        card_id = f"c{self.count}"
        self.count += 1
        shown = printable(record.path)
        self.ids.setdefault(record.path, card_id)
        attrs = [f'id="{card_id}"', f'data-path="{_attr(shown)}"']
        if true_label is not None:
            attrs.append(f'data-true="{_attr(true_label)}"')
        body = []
        picture = _picture_of(record)
        pictures = []
        if picture is not None:
            pictures.append(f'<img src="{_thumbnail(picture)}" alt="" loading="lazy" decoding="async">')
        if isinstance(record, Failure):
            self.failed += 1
            attrs.append(f'data-error="{_attr(record.type)}"')
            cls = "card failed"
            body.append(f'<p class="err"><b>{html.escape(record.type)}</b> {html.escape(record.message)}</p>')
        else:
            first = record.topk[0]
            attrs += [f'data-label="{_attr(first.label)}"', f'data-probability="{json.dumps(first.probability)}"']
            cls = "card"
            if true_label is not None:
                correct = first.label == true_label
                attrs.append(f'data-correct="{str(correct).lower()}"')
                cls += " right" if correct else " wrong"
                body.append(f'<p class="truth">true: <b>{_shown(true_label)}</b></p>')
            explanation = record.explanation
            if explanation is not None and explanation.picture is not None:
                pictures.append(f'<img src="{_thumbnail(explanation.picture)}" alt="{_attr(explanation.method)} '
                                f'of {_attr(printable(explanation.label))}" loading="lazy" decoding="async">')
            rows = "".join(
                f'<li><span class="l">{_shown(p.label)}</span><span class="bar"><i style="width:'
                f'{100 * p.probability:.1f}%"></i></span><span class="p">{_pct(p.probability)}</span></li>'
                for p in record.topk)
            body.append(f'<ol class="topk">{rows}</ol>')
            if explanation is not None:
                body.append(f'<p class="why">{html.escape(explanation.method)} at {html.escape(explanation.layer)} '
                            f'of <b>{_shown(explanation.label)}</b></p>')
        pics = f'<div class="pics n{len(pictures)}">{"".join(pictures)}</div>'
        if (self.count - 1) % SECTION == 0:
            self._spool.write("</section>\n<section>\n" if self.count > 1 else "<section>\n")
        self._spool.write(f'<article class="{cls}" {" ".join(attrs)}>{pics}<p class="path" title="{_attr(shown)}">'
                          f'{_shown(record.path)}</p>{"".join(body)}</article>\n')

    def close(self, ok: bool = True, *, summary: str = "") -> None:
        self._spool.close()
        try:
            if ok:
                with _page(self.path) as (out, raw):
                    out.write(_HEAD.replace("{title}", html.escape(self.title)))
                    out.write(f'<header><h1>{html.escape(self.title)}</h1><p class="sub">{_shown(self.subtitle)}'
                              f'</p><p class="sub">{self.count} input{"s" if self.count != 1 else ""}, '
                              f'{self.failed} failed</p></header>\n')
                    out.write(summary)
                    out.write(_CONTROLS)
                    out.write('<main id="cards">\n')
                    out.flush()
                    with open(self._spool_path, "rb") as cards:
                        shutil.copyfileobj(cards, raw)
                    out.write(("</section>\n" if self.count else "") + "</main>\n" + _TAIL)
        finally:
            os.unlink(self._spool_path)


@contextlib.contextmanager
def _page(path: str):
    """(text stream, its binary file) of a page written beside `path` and renamed over it when the block ends;
    removed, leaving an earlier file as it was, when the block raises."""
    atomic = AtomicFile(path)
    try:
        out = io.TextIOWrapper(atomic.file, encoding="utf-8", newline="\n")
        yield out, atomic.file
        out.flush()
        out.detach()
        atomic.commit()
    except BaseException:
        atomic.abort()
        raise


def evaluation_summary(result: dict, ids: dict[str, str]) -> str:
    """evaluate's section: the metrics, the confusion matrix as a coloured table (row-normalised; over 50
    classes the most confused ones, as the picture), and a gallery of the misclassified images."""
    from .plots import confusion_grid

    def cell(v) -> str:
        return f"<td>{v}</td>"

    parts = ['<section id="summary"><h2>Accuracy</h2><table class="metrics"><tr><th>acc@1</th><th>acc@5</th>'
             '<th>macro F1</th><th>weighted F1</th><th>evaluated</th><th>failed</th></tr><tr>',
             cell(_pct(result["top1"])), cell(_pct(result["top5"])), cell(f'{result["macro"]["f1"]:.3f}'),
             cell(f'{result["weighted"]["f1"]:.3f}'), cell(result["evaluated"]), cell(result["failed"]),
             "</tr></table>"]
    labels = result["confusion"]["labels"]
    keep, grid, dropped = confusion_grid(labels, result["confusion"]["matrix"])
    shown = (f"the {len(keep)} most confused of {len(labels)} classes" if dropped else f"{len(keep)} classes")
    parts.append(f'<h2>Confusion matrix</h2><p class="sub">rows: true class (images); columns: predicted; '
                 f'{shown}; colour: the share of the row</p><div class="scroll"><table class="confusion">'
                 '<tr><th></th>' + "".join(f'<th class="col"><span>{_shown(labels[j])}</span></th>'
                                           for j in keep) + '<th class="col"><span>other</span></th></tr>')
    for i, row in zip(keep, grid):
        support = sum(row)
        cells = []
        for j, count in zip([*keep, None], row):
            share = count / support if support else 0.0
            kind = "d" if j == i else "o"
            style = f' style="--s:{share:.3f}"' if count else ""
            cells.append(f'<td class="{kind}"{style} title="{share:.1%}">{count or ""}</td>')
        parts.append(f'<tr><th>{_shown(labels[i])} ({support})</th>{"".join(cells)}</tr>')
    parts.append("</table></div>")
    missed = result["misclassified"]
    parts.append(f'<h2>Misclassified ({len(missed)})</h2><div class="gallery">')
    for m in missed:
        ref = ids.get(m["path"], "")
        parts.append(f'<figure data-ref="{ref}" data-path="{_attr(printable(m["path"]))}"><img alt="" '
                     f'loading="lazy"><figcaption><span class="t">{_shown(m["label"])}</span> → '
                     f'<span class="w">{_shown(m["predicted"])}</span> {_pct(m["probability"])}'
                     f'<br><small>{_shown(m["path"])}</small></figcaption></figure>')
    parts.append("</div></section>\n")
    return "".join(parts)


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>
:root { color-scheme: light dark; --fg: #1d232a; --muted: #5f6b76; --bg: #f5f6f8; --card: #fff; --line: #dde1e5;
  --bar: #3b82c4; --bad: #c2372b; --good: #2f8a4c; --cell: 59, 130, 196; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e8ea; --muted: #9aa5b1; --bg: #16191d; --card: #1f2328;
  --line: #30363d; --bar: #5aa2e0; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  background: var(--bg); }
header, #summary, .controls { padding: 12px 20px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 18px 0 6px; }
.sub { color: var(--muted); margin: 2px 0; }
.controls { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: 10px 18px;
  align-items: center; background: var(--bg); border-bottom: 1px solid var(--line); }
.controls input[type=search] { width: 280px; padding: 6px 8px; font: inherit; }
.controls input[type=number] { width: 64px; font: inherit; }
#shown { color: var(--muted); }
#cards { padding: 16px 20px; }
#cards > section { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 12px;
  margin-bottom: 12px; content-visibility: auto; contain-intrinsic-size: auto 2800px; }
#cards > section[hidden] { display: none; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
.card[hidden] { display: none; }
.card.failed { border-color: var(--bad); }
.card.wrong { border-left: 4px solid var(--bad); } .card.right { border-left: 4px solid var(--good); }
.pics { display: flex; gap: 4px; height: 160px; align-items: center; justify-content: center; }
.pics img { max-height: 160px; max-width: 100%; min-width: 0; object-fit: contain; border-radius: 4px; }
.pics.n2 img { max-width: 50%; }
.path { font-family: ui-monospace, monospace; font-size: 12px; margin: 6px 0; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; direction: rtl; text-align: left; }
.topk { list-style: none; margin: 0; padding: 0; }
.topk li { display: grid; grid-template-columns: 1fr 70px 48px; gap: 6px; align-items: center; font-size: 13px; }
.topk li:first-child { font-weight: 600; }
.topk .l { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar { background: var(--line); height: 8px; border-radius: 4px; overflow: hidden; }
.bar i { display: block; height: 100%; background: var(--bar); }
.topk .p { text-align: right; font-variant-numeric: tabular-nums; }
.err { color: var(--bad); overflow-wrap: anywhere; } .truth, .why { margin: 4px 0; font-size: 13px; }
.metrics td, .metrics th { padding: 2px 12px 2px 0; text-align: left; }
.scroll { overflow: auto; max-height: 70vh; }
.confusion { border-collapse: collapse; font-size: 12px; }
.confusion th { font-weight: normal; text-align: right; padding: 2px 6px; white-space: nowrap; }
.confusion th.col { height: 110px; vertical-align: bottom; padding: 0; }
.confusion th.col span { display: inline-block; writing-mode: vertical-rl; transform: rotate(180deg); padding: 4px 2px; }
.confusion td { min-width: 28px; height: 24px; text-align: center; border: 1px solid var(--line);
  background: rgba(var(--cell), calc(var(--s, 0) * 0.9)); }
.confusion td.o[style] { background: rgba(194, 55, 43, calc(0.15 + var(--s) * 0.75)); }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; width: 180px; background: var(--card); border: 1px solid var(--line);
  border-radius: 6px; padding: 6px; font-size: 12px; }
.gallery img { max-width: 100%; max-height: 130px; display: block; margin: 0 auto 4px; }
.gallery .t { color: var(--good); } .gallery .w { color: var(--bad); }
.gallery small { color: var(--muted); overflow-wrap: anywhere; }
</style></head><body>
"""

_CONTROLS = """<div class="controls" role="search">
<input type="search" id="q" placeholder="Search a label or a path" aria-label="Search a label or a path">
<label>Sort <select id="sort"><option value="input">input order</option>
<option value="desc">confidence, highest first</option><option value="asc">confidence, lowest first</option></select></label>
<label><input type="checkbox" id="failures"> only failures</label>
<label>top-1 below <input type="number" id="below" min="0" max="100" step="1" placeholder="%"> %</label>
<span id="shown"></span>
</div>
"""

_KEEP = """  // show the cards `test` keeps (each card touched only when it changes), hide the sections left empty
  function keep(cards, sections, shown, test) {
    let n = 0;
    cards.forEach((c, i) => {
      const show = test(c, i);
      if (c.hidden === show) c.hidden = !show;
      n += show;
    });
    sections.forEach(s => {
      const empty = !Array.prototype.some.call(s.children, c => !c.hidden);
      if (s.hidden !== empty) s.hidden = empty;
    });
    shown.textContent = `showing ${n} of ${cards.length}`;
  }
"""

_TAIL = """<script>
"use strict";
(() => {
""" + _KEEP + """  const main = document.getElementById("cards");
  const sections = Array.from(main.children);
  const cards = Array.from(main.querySelectorAll("article.card"));
  const per = sections.length ? sections[0].children.length : 1;
  const keys = cards.map(c => (c.dataset.path + "\\n" +
    Array.from(c.querySelectorAll(".topk .l, .truth b"), e => e.textContent).join("\\n")).toLowerCase());
  const prob = c => c.dataset.probability === undefined ? null : Number(c.dataset.probability);
  const q = document.getElementById("q"), sort = document.getElementById("sort");
  const failures = document.getElementById("failures"), below = document.getElementById("below");
  const shown = document.getElementById("shown");
  function filter() {
    const text = q.value.trim().toLowerCase();
    const limit = below.value === "" ? null : Number(below.value) / 100;
    keep(cards, sections, shown, (c, i) => {
      const p = prob(c);
      return (!text || keys[i].includes(text)) && (!failures.checked || p === null) &&
        (limit === null || (p !== null && p < limit));
    });
  }
  function order() {
    const how = sort.value;
    const sorted = how === "input" ? cards : cards.slice().sort((a, b) => {
      const pa = prob(a), pb = prob(b);
      if (pa === null || pb === null) return (pa === null) - (pb === null);
      return how === "desc" ? pb - pa : pa - pb;
    });
    sections.forEach((s, k) => s.append(...sorted.slice(k * per, (k + 1) * per)));
    filter();
  }
  let timer = 0;
  q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(filter, 120); });
  [failures, below].forEach(e => e.addEventListener("input", filter));
  sort.addEventListener("change", order);
  document.querySelectorAll(".gallery figure").forEach(f => {
    const img = f.dataset.ref && document.querySelector(`#${f.dataset.ref} img`);
    if (img) f.querySelector("img").src = img.src; else f.querySelector("img").remove();
  });
  filter();
})();
</script>
</body></html>
"""


def _picture_at(path: str):
    """The local image at `path` for a thumbnail, or None (a URL is not fetched again; an unreadable file)."""
    if "://" in path or path == "-":
        return None
    try:
        from ..inputs.images import open_local

        return open_local(path, draft_min_side=THUMB)
    except Exception:
        return None


def audit_report(path: str, findings: list[dict], failures: list[dict], summary: dict) -> None:
    """audit's page: the summary (counts and estimated noise rate per class), then a card per finding in the
    findings' order, then a card per failure. DOM contract (docs/audit.md): each card is an `article.card` in
    `#cards` with `data-path`, `data-kind` (label_issue, duplicate, outlier, or failure), `data-class` (the given
    label), `data-score`, and `data-suggested` (label issues) or `data-other` (the duplicate's other path); its
    thumbnails are `img` elements (two for a duplicate). `select#kind` and `select#class` filter the cards,
    `input[type=search]` by path or label. Written atomically; thumbnails are made once per image."""
    thumbs: dict[str, str | None] = {}

    def thumb(p: str) -> str:
        if p not in thumbs:
            picture = _picture_at(p)
            thumbs[p] = _thumbnail(picture) if picture is not None else None
        src = thumbs[p]
        return f'<img src="{src}" alt="" loading="lazy" decoding="async">' if src else ""

    kinds = {"label_issue": "label issue", "duplicate": "near-duplicate", "outlier": "outlier"}
    cards = []
    for f in findings:
        attrs = [f'data-path="{_attr(printable(f["path"]))}"', f'data-kind="{f["kind"]}"',
                 f'data-class="{_attr(printable(f["given_label"]))}"', f'data-score="{json.dumps(f["score"])}"']
        pictures = [thumb(f["path"])]
        body = [f'<p class="kind">{kinds[f["kind"]]} · score {f["score"]:.3f}</p>',
                f'<p class="truth">given: <b>{_shown(f["given_label"])}</b></p>']
        if f["kind"] == "label_issue":
            attrs.append(f'data-suggested="{_attr(printable(f["suggested_label"]))}"')
            body.append(f'<p class="why">suggested: <b>{_shown(f["suggested_label"])}</b> '
                        f'({_pct(f["suggested_probability"])})</p>')
        elif f["kind"] == "duplicate":
            attrs.append(f'data-other="{_attr(printable(f["other_path"]))}"')
            pictures.append(thumb(f["other_path"]))
            body.append(f'<p class="why">{f["reason"]} with <b>{_shown(f["other_label"])}</b>: '
                        f'<span class="other">{_shown(f["other_path"])}</span></p>')
        elif f.get("class_distance") is not None:
            body.append(f'<p class="why">distance to its class: {f["class_distance"]:.3f}</p>')
        pictures = [p for p in pictures if p]
        cards.append(f'<article class="card {f["kind"]}" {" ".join(attrs)}><div class="pics n{len(pictures)}">'
                     f'{"".join(pictures)}</div><p class="path" title="{_attr(printable(f["path"]))}">'
                     f'{_shown(f["path"])}</p>{"".join(body)}</article>\n')
    for r in failures:
        cards.append(f'<article class="card failed" data-path="{_attr(printable(r["path"]))}" data-kind="failure" '
                     f'data-error="{_attr(r["error"]["type"])}"><div class="pics n0"></div><p class="path">'
                     f'{_shown(r["path"])}</p><p class="err"><b>{html.escape(r["error"]["type"])}</b> '
                     f'{html.escape(r["error"]["message"])}</p></article>\n')

    counts = summary["findings"]
    rows = "".join(
        f'<tr><td>{_shown(name)}</td><td>{c["images"]}</td><td>{_pct(c["noise_rate"])}</td><td>{c["label_issue"]}'
        f'</td><td>{c["duplicate"]}</td><td>{c["outlier"]}</td></tr>' for name, c in summary["per_class"].items())
    head = (f'<section id="summary"><h2>Summary</h2><p class="sub">{summary["images"]} images, '
            f'{summary["folds"]}-fold cross-fitting, estimated noise {_pct(summary["estimated_noise_rate"])}: '
            f'{counts["label_issue"]} label issues, {counts["duplicate"]} near-duplicates, {counts["outlier"]} '
            f'outliers, {len(failures)} could not be read</p><table class="metrics"><tr><th>class</th>'
            f'<th>images</th><th>noise rate</th><th>label issues</th><th>near-duplicates</th><th>outliers</th></tr>'
            f'{rows}</table></section>\n')
    options = "".join(f'<option value="{_attr(printable(c))}">{_shown(c)}</option>' for c in summary["classes"])
    controls = _AUDIT_CONTROLS.replace("{classes}", options)
    title = "resnet-classify audit"
    with _page(path) as (out, _):
        out.write(_HEAD.replace("{title}", title))
        out.write(f'<header><h1>{title}</h1><p class="sub">{_shown(summary["data"])}: {summary["arch"]}, '
                  f'{_shown(summary["weights"])}</p></header>\n')
        out.write(head)
        out.write(controls)
        out.write('<main id="cards">\n')
        for start in range(0, len(cards), SECTION):
            out.write("<section>\n" + "".join(cards[start:start + SECTION]) + "</section>\n")
        out.write("</main>\n" + _AUDIT_TAIL)


_AUDIT_CONTROLS = """<div class="controls" role="search">
<input type="search" id="q" placeholder="Search a label or a path" aria-label="Search a label or a path">
<label>Kind <select id="kind"><option value="">all</option><option value="label_issue">label issues</option>
<option value="duplicate">near-duplicates</option><option value="outlier">outliers</option>
<option value="failure">could not be read</option></select></label>
<label>Class <select id="class"><option value="">all</option>{classes}</select></label>
<span id="shown"></span>
</div>
"""

_AUDIT_TAIL = """<script>
"use strict";
(() => {
""" + _KEEP + """  const sections = Array.from(document.getElementById("cards").children);
  const cards = Array.from(document.querySelectorAll("#cards article.card"));
  const keys = cards.map(c => [c.dataset.path, c.dataset.class || "", c.dataset.suggested || "",
    c.dataset.other || ""].join("\\n").toLowerCase());
  const q = document.getElementById("q"), kind = document.getElementById("kind");
  const cls = document.getElementById("class"), shown = document.getElementById("shown");
  function filter() {
    const text = q.value.trim().toLowerCase();
    keep(cards, sections, shown, (c, i) => (!text || keys[i].includes(text)) &&
      (!kind.value || c.dataset.kind === kind.value) && (!cls.value || c.dataset.class === cls.value));
  }
  let timer = 0;
  q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(filter, 120); });
  [kind, cls].forEach(e => e.addEventListener("change", filter));
  filter();
})();
</script>
</body></html>
"""
