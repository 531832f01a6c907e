"""`resnet-classify evaluate`: how good is each network on my labelled photos?

    DATA (labelled.read) --> labels matched to the model's classes (labelled.match) --> job.make_job
        --> engines.records(job) --> metrics.Evaluation, --predictions, --confusion --> table or JSON

The same pipeline and batches as classify, one model after another; memory holds the confusion matrix and the
misclassified and failed images, nothing per correct image. The metrics' definitions: metrics.py.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Annotated, Optional

import typer

from ...core.console import eprint, print_data, printable
from ...core.errors import UsageError
from ...models.devices import Precision
from ...run.job import Engine, ModelOptions, RunOptions, make_job
from ..options import (BatchSizeOpt, CropOpt, DeviceOpt, EngineOpt, FastDecodeOpt, LabelsOpt, OfflineOpt, PrecisionOpt,
                       QuietOpt, RayAddressOpt, ResizeOpt, TtaOpt, WorkersOpt)
from ...outputs.report import THUMB as REPORT_VIEW
from .stream import RecordStream
from ...outputs.writers import Format, SummaryFormat, choose_format


def command(
    data: Annotated[str, typer.Argument(
        metavar="DATA", show_default=False,
        help="A folder of class folders (DATA/<class>/*.jpg), or a .csv or .jsonl manifest with path and label "
        "columns. A class is named by its index, its WordNet id (n02124075) or its name.")],
    arch: Annotated[Optional[str], typer.Option(
        "--arch", "-a", metavar="ARCH[,ARCH...]", show_default=False,
        help="Architecture, or several separated by commas for a leaderboard. Default: resnet50, or the one "
        "--weights names.")] = None,
    weights: Annotated[str, typer.Option(
        "--weights", "-w", metavar="WEIGHTS[,WEIGHTS...]",
        help="Published weights or a checkpoint file, as classify takes them; several separated by commas.")]
    = "DEFAULT",
    format: Annotated[Optional[SummaryFormat], typer.Option(
        "--format", "-f", case_sensitive=False, show_default=False,
        help="Default: a table on a terminal, else json; with --output, json for .json, else table.")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE", show_default=False,
        help="Write the results to FILE (atomically) instead of stdout.")] = None,
    predictions: Annotated[Optional[str], typer.Option(
        "--predictions", metavar="FILE.jsonl", show_default=False,
        help="Also write each image's record (classify's schema plus \"label\", the true class).")] = None,
    confusion: Annotated[Optional[str], typer.Option(
        "--confusion", metavar="FILE.csv|FILE.png", show_default=False,
        help="Also write the confusion matrix: counts as CSV, or a picture normalised by row (needs "
        "pip install 'resnet-classify[plot]'). With several models, one file each, named after the model.")]
    = None,
    report: Annotated[Optional[str], typer.Option(
        "--report", metavar="FILE.html", show_default=False,
        help="Also write a self-contained HTML page: the metrics, the confusion matrix, the misclassified "
        "images, and a card per image to search and filter. With several models, one file each.")] = None,
    restrict: Annotated[bool, typer.Option(
        "--restrict", help="Predict among the classes present in DATA only (for a subset of ImageNet).")] = False,
    tta: TtaOpt = False,
    labels: LabelsOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    fast_decode: FastDecodeOpt = False,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    workers: WorkersOpt = None,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
) -> None:
    """Measure accuracy on labelled images: top-1/top-5, per-class precision/recall/F1, confusion matrix."""
    from ...analysis import labelled
    from ...core.files import AtomicFile

    fmt = choose_format(format, output=output, pipe=Format.json, by_extension={".json": Format.json},
                        file=Format.table)
    from ...outputs.paths import check_location

    if predictions and not predictions.lower().endswith((".jsonl", ".ndjson")):
        raise UsageError(f"--predictions {predictions}: give a .jsonl file")
    if confusion:
        _check_confusion(confusion)
    if report:
        from ...outputs.paths import check_report

        check_report(report)
    for option, path in (("--output", output), ("--predictions", predictions), ("--confusion", confusion)):
        if path:
            check_location(option, path)
    models = _models(arch, weights)
    data_set = labelled.read(data)
    if data_set.left_out and not quiet:
        eprint(f"{data}: {data_set.left_out} file(s) directly in DATA belong to no class folder and are left out")
    if data_set.empty and not quiet:
        eprint(f"{data}: class folder(s) {', '.join(map(repr, data_set.empty))} hold no image and are not "
               "evaluated")
    options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         fast_decode=fast_decode, engine=engine, ray_address=ray_address, offline=offline,
                         quiet=quiet)
    # every model resolved once, and checked before any is run
    runs, problems = [], []
    for model_arch, model_weights in models:
        try:
            runs.append(ModelOptions(model_arch, model_weights, resize, crop, labels).resolve())
        except UsageError as exc:  # named with the others below: a leaderboard reports every model at once
            problems.append(exc)
    _check_models(runs, data_set, offline=offline, quiet=quiet, problems=problems)
    _check_outputs(data, data_set, runs, weights=[w for _, w in models], labels=labels, output=output,
                   predictions=predictions, confusion=confusion, report=report)
    results, code = [], 0
    pred_file = AtomicFile(predictions) if predictions else None
    try:
        for resolved in runs:
            result, run_code = _evaluate(resolved, data_set, options, restrict=restrict, tta=tta,
                                         predictions=pred_file,
                                         several=len(runs) > 1,
                                         report=report and _named_for(report, resolved, len(runs) > 1))
            results.append(result)
            code = max(code, run_code)
            if confusion:
                _write_confusion(_named_for(confusion, resolved, len(runs) > 1), result)
            if run_code >= 128:
                break  # interrupted: the models not started yet are not run
        if pred_file is not None:
            pred_file.commit()
            pred_file = None
    finally:
        if pred_file is not None:
            pred_file.abort()
    _print(results, fmt, output)
    raise typer.Exit(code)


def _check_outputs(data: str, data_set, runs, *, weights: list[str], labels: str | None, output, predictions,
                   confusion, report) -> None:
    """Every file the run will write (a per-model --confusion and --report for each model) checked against the
    images, the manifest, the checkpoints and --labels, and against each other, before any image is read."""
    from ...outputs.paths import check_outputs

    several = len(runs) > 1
    files = [("--output", output), ("--predictions", predictions)]
    for resolved in runs:
        files += [("--confusion", confusion and _named_for(confusion, resolved, several)),
                  ("--report", report and _named_for(report, resolved, several))]
    check_outputs([data], files, recursive=True, reads=(*[s.path for s in data_set.sources], *weights, labels))


def _models(arch: str | None, weights: str) -> list[tuple[str | None, str]]:
    """(arch, weights) of each model: one list broadcast over a single value of the other, or two lists of the
    same length paired."""
    archs = [a.strip() for a in arch.split(",") if a.strip()] if arch else [None]
    weight_list = [w.strip() for w in weights.split(",") if w.strip()] or ["DEFAULT"]
    if len(archs) > 1 and len(weight_list) > 1 and len(archs) != len(weight_list):
        raise UsageError(f"--arch lists {len(archs)} models and --weights {len(weight_list)}: give one of them "
                         "once, or both with as many entries")
    n = max(len(archs), len(weight_list))
    return [(archs[i if len(archs) > 1 else 0], weight_list[i if len(weight_list) > 1 else 0]) for i in range(n)]


def _check_models(runs, data_set, *, offline: bool, quiet: bool, problems: list[UsageError] = ()
                  ) -> None:
    """Before the first image of the first model: every model's weights are at hand (published weights cached,
    else downloaded now; a checkpoint that fits its architecture, judged from its tensors' shapes) and DATA's
    labels name its classes. One usage error lists every model that cannot run (WeightsUnavailable when
    published weights are all that is missing), so a leaderboard never stops after its first models."""
    from ...analysis import labelled
    from ...core.errors import WeightsUnavailable
    from ...models.weights import check_checkpoint, class_names, fetch

    problems = list(problems)
    total = len(runs) + len(problems)
    for resolved in runs:
        try:
            if resolved.spec is not None:
                fetch(resolved.spec, offline=offline, quiet=quiet)
            elif resolved.runtime == "torch":  # an exported file's metadata was checked when it was resolved
                check_checkpoint(resolved.arch, resolved.name)
            labelled.match(data_set.labels, class_names(resolved), model=resolved.arch.name)
        except UsageError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        kind = WeightsUnavailable if all(isinstance(p, WeightsUnavailable) for p in problems) else UsageError
        raise kind(f"{len(problems)} of the {total} models cannot be evaluated; nothing was run:\n" +
                   "\n".join(f"- {p}" for p in problems))


def _evaluate(resolved, data_set, options: RunOptions, *, restrict: bool, tta: bool, predictions, several: bool,
              report: str | None = None) -> tuple[dict, int]:
    """One model's evaluation: (its result, the run's exit code)."""
    from ...analysis import labelled
    from ...analysis.metrics import Evaluation
    from ...run.tasks import Classify, topk_for
    from ...models.weights import class_names
    from ...outputs.writers import dumps

    classes = class_names(resolved)
    name = resolved.arch.name
    found = labelled.match(data_set.labels, classes, model=name)
    truth = [found[label] for label in data_set.labels]
    present = sorted(set(truth))
    topk = topk_for(None, len(present) if restrict else len(classes))
    task = Classify(topk, tuple(present) if restrict else None, tta)
    job = make_job([], resolved, task, options, sources=data_set.sources,
                   view_size=REPORT_VIEW if report else None)
    evaluation = Evaluation(present, classes)
    page = None
    if report:
        from ...outputs.report import HtmlReport

        page = HtmlReport(report, title="resnet-classify evaluate", subtitle=f"{name}, {resolved.name}")
    speed = Throughput()
    job = dataclasses.replace(job, on_batch=speed.batch)
    try:
        with RecordStream(job, f"evaluating {name}" if several else "evaluating", total=len(truth)) as stream:
            for record, true_index in zip(stream, truth):
                evaluation.add(record, true_index)
                if predictions is not None:
                    predictions.file.write((dumps({**record.to_dict(), "label": classes[true_index]}) + "\n")
                                           .encode("utf-8"))
                if page is not None:
                    page.add(record, true_label=classes[true_index])
            speed.end()
            code = stream.exit_code(len(evaluation.failures))
    except BaseException:
        if page is not None:
            page.close(ok=False)
        raise
    if stream.interrupted:
        eprint(f"interrupted: the results cover the first {evaluation.images} of {len(truth)} images")
    summary = evaluation.summary()
    rate = speed.rate(summary["evaluated"])
    result = {"arch": name, "weights": resolved.name, **summary,
              "images_per_second": None if rate is None else round(rate, 2)}
    if page is not None:
        from ...outputs.report import evaluation_summary

        page.close(summary=evaluation_summary(result, page.ids))
    result["_resolved"] = resolved  # for the leaderboard's size columns; not part of the JSON
    return result, code


class Throughput:
    """One model's images/s, measured alike for every model of a leaderboard: the images evaluated after its
    first batch, over the time from the end of that batch to the end of the last. Loading the model (and, for
    the first model of a run, starting torch) and the first, warm-up batch are left out. An engine that does not
    report its batches (`Job.on_batch`: Ray), or a run of a single batch, is timed whole, loading included."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None  # the end of the first batch
        self.last: float | None = None  # the end of the last batch after it
        self.images = 0  # the images of the batches after the first
        self.stop: float | None = None

    def batch(self, images: int) -> None:
        """A batch of `images` successfully decoded images has been through the network."""
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.images += images
            self.last = now

    def end(self) -> None:
        self.stop = time.perf_counter()

    def rate(self, evaluated: int) -> float | None:
        """Images per second; None when no time could be measured."""
        if self.last is not None and self.last > self.first:
            return self.images / (self.last - self.first)
        seconds = (self.stop or time.perf_counter()) - self.start
        return evaluated / seconds if seconds > 0 else None


def _model_size(resolved) -> dict:
    """Parameters and GFLOPS for the leaderboard: torchvision's published figures, or counted on the
    architecture at the crop used (a checkpoint, or another crop)."""
    if resolved.spec is not None and resolved.preprocess.crop == resolved.spec.preprocess.crop:
        return {"params": resolved.spec.num_params, "gflops": resolved.spec.gflops}
    from ...models.explorer import describe

    size = resolved.preprocess.crop
    d = describe(resolved.arch.name, (size, size))
    return {"params": d["params_total"], "gflops": round(d["macs_total"] / 1e9, 3)}


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _print(results: list[dict], fmt: Format, output: str | None) -> None:
    from ...core.files import AtomicFile
    from ...outputs.writers import dumps

    if fmt is Format.json:
        doc = _public(results[0]) if len(results) == 1 else [_public(r) for r in results]
        text = dumps(doc) + "\n"
        if output:
            atomic = AtomicFile(output)
            atomic.file.write(text.encode("utf-8"))
            atomic.commit()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        return

    def render(console) -> None:
        if len(results) > 1:
            _leaderboard(results, console)
        else:
            _report(results[0], console)

    if output:
        from ...core.console import data_console

        console = data_console(highlight=False, width=120)
        with console.capture() as captured:
            render(console)
        atomic = AtomicFile(output)
        atomic.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()).encode("utf-8"))
        atomic.commit()
    else:
        print_data(render)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return "" if ci is None else f"[dim](95% CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f})[/]"


def _report(r: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{escape(r['arch'])}[/]  [dim]{escape(printable(r['weights']))}[/]")
    console.print(f"{r['images']} images: {r['evaluated']} evaluated, {r['failed']} failed"
                  + (f", {r['images_per_second']} images/s" if r["images_per_second"] else ""))
    console.print(f"acc@1 [bold]{_pct(r['top1'])}[/] {_ci(r['top1_ci'])}   acc@5 [bold]{_pct(r['top5'])}[/] "
                  f"{_ci(r['top5_ci'])}")
    console.print(f"macro    precision {r['macro']['precision']:.3f}  recall {r['macro']['recall']:.3f}  "
                  f"F1 {r['macro']['f1']:.3f}")
    console.print(f"weighted precision {r['weighted']['precision']:.3f}  recall {r['weighted']['recall']:.3f}  "
                  f"F1 {r['weighted']['f1']:.3f}")
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), title_justify="left")
    for col, justify in (("class", "left"), ("index", "right"), ("support", "right"), ("precision", "right"),
                         ("recall", "right"), ("F1", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for c in r["classes"]:
        table.add_row(escape(printable(c["label"])), str(c["index"]), str(c["support"]), f"{c['precision']:.3f}",
                      f"{c['recall']:.3f}", f"{c['f1']:.3f}")
    console.print()
    console.print(table)
    if r["misclassified"]:
        console.print()
        console.print(f"[bold]misclassified[/] ({len(r['misclassified'])}; all of them with --format json)")
        for m in r["misclassified"][:10]:
            console.print(f"  {escape(printable(m['path']))}: {escape(printable(m['label']))} → "
                          f"{escape(printable(m['predicted']))} "
                          f"({_pct(m['probability'])})", soft_wrap=True)
    for f in r["failures"]:
        console.print(f"  [red]✗[/] {escape(printable(f['path']))}: {f['error']['type']}: "
                      f"{escape(printable(f['error']['message']))}",
                      soft_wrap=True)


def _leaderboard(results: list[dict], console) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col, justify in (("arch", "left"), ("weights", "left"), ("acc@1", "right"), ("acc@5", "right"),
                         ("images/s", "right"), ("params", "right"), ("GFLOPS", "right"), ("failed", "right")):
        # On a narrow terminal only the weights (long paths) give way, folded onto more lines; every other
        # column keeps its width.
        if col == "weights":
            table.add_column(col, justify=justify, overflow="fold", min_width=8)
        else:
            table.add_column(col, justify=justify, no_wrap=True)
    for r in sorted(results, key=lambda r: -r["top1"]):
        size = _model_size(r["_resolved"])
        table.add_row(escape(r["arch"]), escape(printable(r["weights"])), _pct(r["top1"]), _pct(r["top5"]),
                      "" if r["images_per_second"] is None else f"{r['images_per_second']:.1f}",
                      f"{size['params'] / 1e6:.1f} M", f"{size['gflops']:.2f}", str(r["failed"]))
    console.print(table)
    console.print(f"[dim]{results[0]['images']} images; sorted by acc@1. Per-class metrics: --format json.[/]")


def _check_confusion(path: str) -> None:
    ext = path.lower().rsplit(".", 1)[-1]
    if ext not in ("csv", "png"):
        raise UsageError(f"--confusion {path}: give a .csv (counts) or .png (picture) file")
    if ext == "png":
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--confusion FILE.png needs matplotlib: pip install 'resnet-classify[plot]'")


def _named_for(path: str, resolved, several: bool) -> str:
    """A per-model file's name (--confusion, --report): `path` for one model, else `stem-ARCH-WEIGHTS.ext`."""
    if not several:
        return path
    stem, dot, ext = path.rpartition(".")
    weights = resolved.name.rsplit("/", 1)[-1].replace(".", "_")
    return f"{stem}-{resolved.arch.name}-{weights}.{ext}"


def _write_confusion(path: str, result: dict) -> None:
    from ...core.files import AtomicFile
    from ...outputs.writers import csv_cell

    labels, matrix = result["confusion"]["labels"], result["confusion"]["matrix"]
    atomic = AtomicFile(path)
    try:
        if path.lower().endswith(".csv"):
            import csv
            import io

            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["label", *map(csv_cell, labels), "other"])
            for label, row in zip(labels, matrix):
                writer.writerow([csv_cell(label), *row])
            atomic.file.write(buf.getvalue().encode("utf-8"))
        else:
            from ...outputs.plots import confusion_png

            confusion_png(atomic.file, labels, matrix, title=f"{result['arch']} · {result['weights']}")
        atomic.commit()
    except BaseException:
        atomic.abort()
        raise
