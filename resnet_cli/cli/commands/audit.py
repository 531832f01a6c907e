"""`resnet-classify audit`: which labelled photos are probably mislabelled, duplicated across classes or sets, or
do not belong at all.

    DATA (labelled.read) [+ --against OTHER] --> features: cache or embed job (train.extract) -->
        analysis.audit.audit (cross-fitted probe, confident learning, near-duplicates, outliers) -->
        findings (-o FILE.jsonl, --report FILE.html) + summary (a table, or json)
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from ...core.console import eprint, isatty, print_data, progress_bar
from ...core.errors import UsageError
from ...models.devices import Precision
from ...run.job import ModelOptions, RunOptions
from ...outputs.writers import Format, SummaryFormat, choose_format
from ..options import (ArchOpt, BatchSizeOpt, FastDecodeOpt, LocalDeviceOpt, LocalWorkersOpt, OfflineOpt, PrecisionOpt,
                       QuietOpt, WeightsOpt)


def command(
    data: Annotated[str, typer.Argument(
        metavar="DATA", show_default=False,
        help="A folder of class folders (DATA/<class>/*.jpg), or a .csv or .jsonl manifest with path and label "
        "columns, as train reads it.")],
    against: Annotated[Optional[str], typer.Option(
        "--against", metavar="OTHER_DATA", show_default=False,
        help="A second labelled set (a validation or test set, same forms as DATA; its classes need not be "
        "DATA's): near-duplicates between the two are reported as leakage.")] = None,
    folds: Annotated[int, typer.Option(
        "--folds", min=2, max=100, metavar="K",
        help="Cross-fitting folds: each image's probabilities come from a head fitted on the other K-1.")] = 5,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Seed of the folds.")] = 0,
    threshold: Annotated[float, typer.Option(
        "--threshold", "-t", min=-1.0, max=1.0, metavar="T",
        help="The cosine similarity at which two images are near-duplicates.")] = 0.98,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE.jsonl", show_default=False,
        help="Write the findings there, one JSON record a line, ranked (docs/audit.md).")] = None,
    report: Annotated[Optional[str], typer.Option(
        "--report", metavar="FILE.html", show_default=False,
        help="Also write a self-contained HTML page: a card per finding with its thumbnails, filters by kind "
        "and class.")] = None,
    format: Annotated[Optional[SummaryFormat], typer.Option(
        "--format", "-f", case_sensitive=False, show_default=False,
        help="The summary and findings on stdout: default a table on a terminal, else json.")] = None,
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    max_iter: Annotated[int, typer.Option(
        "--max-iter", min=1, metavar="N",
        help="The most L-BFGS iterations of each fold's head (it stops earlier once converged).")] = 1000,
    device: LocalDeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = None,
    workers: LocalWorkersOpt = None,
    fast_decode: FastDecodeOpt = False,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find the likely label errors, near-duplicates and outliers in a labelled image set."""
    from ...analysis import labelled
    from ...outputs.paths import check_location, check_outputs, check_report

    if output is not None:
        if not output.lower().endswith(".jsonl"):
            raise UsageError(f"-o {output}: the findings are written as a .jsonl file")
        check_location("--output", output)
    check_report(report)
    fmt = choose_format(format, pipe=Format.json)
    options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         fast_decode=fast_decode, offline=offline, quiet=quiet)
    resolved = ModelOptions(arch, weights).resolve()
    data_set = labelled.read(data)
    if against is not None and os.path.exists(against) and os.path.exists(data) and os.path.samefile(data, against):
        raise UsageError(f"--against {against} is DATA itself: give the other set (a validation or test set) to "
                         "look for leakage into it")
    other_set = labelled.read(against) if against else None
    sources = data_set.sources + (other_set.sources if other_set else [])
    check_outputs([data] + ([against] if against else []), [("--output", output), ("--report", report)],
                  recursive=True, reads=(*[s.path for s in sources], weights))
    if data_set.empty:
        raise UsageError(f"{data}: no image in class folder{'s' if len(data_set.empty) > 1 else ''} "
                         f"{', '.join(map(repr, data_set.empty))}")
    classes = sorted(set(data_set.labels))
    if len(classes) < 2:
        raise UsageError(f"{data}: an audit needs at least two classes (found {len(classes)})")
    _check_folds(data, [l for s, l in zip(data_set.sources, data_set.labels) if s.error is None], classes, folds)

    from .train import extract

    features, failures, counts, code = extract(sources, resolved, options)
    if not quiet:  # a note, never the output: the output is the same whether the cache was empty or full
        eprint(f"features: {counts['cached']} read from the cache, {counts['extracted']} extracted"
               + (f", {counts['failed']} could not be read" if counts["failed"] else ""))
    _check_folds(data, [l for s, l in zip(data_set.sources, data_set.labels) if s.path in features], classes, folds,
                 failed=len(failures))

    import numpy as np

    from ...analysis import audit

    index = {c: i for i, c in enumerate(classes)}

    def rows(dataset):
        """(paths, labels, (n, D) features) of the images whose features were had."""
        kept = [(s.path, label) for s, label in zip(dataset.sources, dataset.labels) if s.path in features]
        paths = [p for p, _ in kept]
        x = np.stack([features[p] for p in paths]) if paths else np.zeros((0, 1), np.float32)
        return paths, [label for _, label in kept], x

    paths, labels, x = rows(data_set)
    y = np.array([index[label] for label in labels], np.int64)
    # --against is looked at for leakage only: its labels need not be DATA's classes
    other = rows(other_set) if other_set is not None else None
    del features  # each vector is now in x or other's (the dict's copies would double the memory)
    bar = progress_bar(sys.stderr) if not quiet and isatty(sys.stderr) else None
    if bar is not None:
        bar.start()
        task = bar.add_task("cross-fitting", total=folds)
    try:
        found, summary = audit.audit(paths, y, classes, x, folds=folds, seed=seed, threshold=threshold,
                                     max_iter=max_iter, against=other,
                                     progress=(lambda: bar.advance(task)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.stop()
    summary = {"data": data, "against": against, "arch": resolved.arch.name, "weights": resolved.name,
               **{k: v for k, v in summary.items() if k != "against"},
               "against_images": summary["against"], "failed": len(failures)}
    if output is not None:
        _write_jsonl(output, found, failures)
    if report:
        from ...outputs.report import audit_report

        audit_report(report, found, failures, summary)
    _print(summary, found, failures, fmt)
    raise typer.Exit(code)


def _check_folds(data: str, labels: list[str], classes: list[str], folds: int, failed: int = 0) -> None:
    """A usage error naming every class with fewer than `folds` usable images."""
    from collections import Counter

    count = Counter(labels)
    few = [c for c in classes if count[c] < folds]
    if few:
        named = ", ".join(f"{c!r} ({count[c]})" for c in few)
        raise UsageError(f"{data}: --folds {folds} needs at least {folds} usable images in each class; "
                         f"too few in {named}" + (f" ({failed} image(s) could not be read)" if failed else "")
                         + ": add images or lower --folds")


def _write_jsonl(path: str, found: list[dict], failures: list[dict]) -> None:
    from ...core.files import AtomicFile
    from ...outputs.writers import dumps

    with AtomicFile(path) as atomic:
        atomic.file.write("".join(dumps(r) + "\n" for r in found + failures).encode("utf-8"))


def _print(summary: dict, found: list[dict], failures: list[dict], fmt: Format) -> None:
    from ...outputs.writers import dumps

    if fmt is Format.json:
        sys.stdout.write(dumps({"summary": summary, "findings": found, "failures": failures}) + "\n")
        sys.stdout.flush()
        return

    def render(console) -> None:
        from rich.markup import escape
        from rich.table import Table

        from ...core.console import printable

        counts = summary["findings"]
        console.print(f"[bold]{escape(printable(summary['data']))}[/]: {summary['images']} images, "
                      f"{len(summary['classes'])} classes, {summary['folds']}-fold cross-fitting "
                      f"(accuracy {100 * summary['cross_fitted_accuracy']:.1f}%); estimated noise "
                      f"{100 * summary['estimated_noise_rate']:.1f}%; {counts['label_issue']} label issues, "
                      f"{counts['duplicate']} near-duplicate{'s' * (counts['duplicate'] != 1)}, "
                      f"{counts['outlier']} outlier{'s' * (counts['outlier'] != 1)}"
                      + (f"; {summary['failed']} could not be read" if summary["failed"] else ""), soft_wrap=True)
        per = Table("class", "images", "noise rate", "label issues", "duplicates", "outliers", box=None)
        for name, c in summary["per_class"].items():
            per.add_row(escape(printable(name)), str(c["images"]), f"{100 * c['noise_rate']:.1f}%",
                        str(c["label_issue"]), str(c["duplicate"]), str(c["outlier"]))
        console.print(per)
        if found:
            table = Table("kind", "score", "path", "given", "suggested / other", box=None)
            for f in found:
                if f["kind"] == "duplicate":
                    extra = f"{f['reason']}: {f['other_label']} {f['other_path']}"
                else:
                    extra = f["suggested_label"] or ""
                table.add_row(f["kind"], f"{f['score']:.3f}", escape(printable(f["path"])),
                              escape(printable(f["given_label"])), escape(printable(extra)))
            console.print(table)
        for r in failures:
            console.print(f"[bold]{escape(printable(r['path']))}[/]  [red]✗ {r['error']['type']}:[/] "
                          f"{escape(printable(r['error']['message']))}", soft_wrap=True)

    print_data(render)
