"""`resnet-classify classify` (the default command): the top-k ImageNet classes of each input, in input order.

    options --> api.build_job(Classify, ModelOptions, RunOptions) (resolved once, checked, no torch)
        --> engines.records(job) --> write_records --> exit code

This file owns what classify adds around an engine: the output file and its format, `--resume` and
`--report`; the loop over the records (signals, the progress bar, per-file lines on stderr, the exit code) is
commands/stream.py's.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, BinaryIO, Callable, Optional, TextIO

import typer

from ..console import eprint, isatty
from ..errors import UsageError
from ..devices import Precision
from ..job import Engine, InputOptions, Job, ModelOptions, RunOptions
from ..options import (ArchOpt, BatchSizeOpt, CropOpt, DeviceOpt, EngineOpt, FastDecodeOpt, InputsArg, LabelsOpt,
                       NullOpt, OfflineOpt, OutputOpt, PrecisionOpt, QuietOpt, RayAddressOpt, RecursiveOpt, ResizeOpt,
                       TopkOpt, TtaOpt, WeightsOpt, WorkersOpt)
from ..records import Record
from ..report import THUMB as REPORT_VIEW
from .stream import RecordStream, failure_line
from ..writers import RECORD_EXTENSIONS, Format, choose_format, open_writer

if TYPE_CHECKING:
    from ..resume import Resume

FormatOpt = Annotated[Optional[Format], typer.Option(
    "--format", "-f", case_sensitive=False, show_default=False,
    help="Default: a table on a terminal, else jsonl; with --output, by the file's extension (.json, .csv, "
    ".txt = table, else jsonl).")]
ReportOpt = Annotated[Optional[str], typer.Option(
    "--report", metavar="FILE.html", show_default=False,
    help="Also write a self-contained HTML page to browse the results: a card per input with its thumbnail "
    "and labels, search, sort and filters.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted run: keep --output's successes, retry its failures, classify the "
    "rest.")]


def command(
    inputs: InputsArg,
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    topk: TopkOpt = None,
    tta: TtaOpt = False,
    format: FormatOpt = None,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    report: ReportOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    recursive: RecursiveOpt = False,
    null: NullOpt = False,
    offline: OfflineOpt = False,
    labels: LabelsOpt = None,
    fast_decode: FastDecodeOpt = False,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    quiet: QuietOpt = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
) -> None:
    """Classify images; print the top-k ImageNet classes of each, in input order."""
    fmt = check_output(format, output, resume)
    check_report(report, resume)
    check_outputs(inputs, [("--output", output), ("--report", report)], recursive=recursive,
                  reads=(weights, labels))
    from ..api import build_job
    from ..tasks import Classify

    model = ModelOptions(arch, weights, resize, crop, labels)
    options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         fast_decode=fast_decode, engine=engine, ray_address=ray_address, offline=offline,
                         quiet=quiet)
    job = build_job(inputs, Classify(topk, tta=tta), model, options, listing=InputOptions(recursive, null),
                    view_size=REPORT_VIEW if report else None)
    previous = None
    if resume:
        from .. import resume as resuming

        previous = resuming.load(output, fmt, job)
        if previous is not None:
            job.inputs.resume = previous.claim
    raise typer.Exit(run(job, fmt, output, previous, report=report))


def check_output(fmt: Format | None, output: str | None, resume: bool) -> Format:
    """The output's format, with the rules that involve --output: checked before any work starts."""
    if resume and not output:
        raise UsageError("--resume needs --output FILE (the file to resume)")
    if output:
        check_writable(output)
    return choose_format(fmt, output=output, pipe=Format.jsonl, by_extension=RECORD_EXTENSIONS)


def check_report(report: str | None, resume: bool = False) -> None:
    """--report: an .html file that can be created, and not with --resume (a page covers one whole run)."""
    if not report:
        return
    if resume:
        raise UsageError("--report covers one whole run; it cannot be combined with --resume")
    if not report.lower().endswith((".html", ".htm")):
        raise UsageError(f"--report {report}: give an .html file")
    check_writable(report, "--report")


def check_writable(output: str, option: str = "--output") -> None:
    """--output must be creatable (or replaceable) before any work starts, not found out after the model loads
    (outputs.check_location)."""
    from ..outputs import check_location

    check_location(option, output)


def check_outputs(inputs: list[str], files: list[tuple[str, str | None]], *, recursive: bool = False,
                  reads: tuple[str | None, ...] = (), folder: tuple[str, str] | None = None,
                  folder_extensions: tuple[str, ...] = ()) -> None:
    """No output (`files`: (option, path or None)) may be an input (`inputs`, the command line's; `reads`: other
    files the run reads, such as --weights and --labels) or another output: outputs.check."""
    from ..outputs import Inputs, check

    check(Inputs.of(inputs, files=[r for r in reads if r], recursive=recursive),
          [(option, path) for option, path in files if path], folder=folder, folder_extensions=folder_extensions)


def run(job: Job, fmt: Format, output: str | None, previous: Resume | None = None, *, stdout: BinaryIO | None = None,
        stderr: TextIO | None = None, report: str | None = None, each: Callable[[Record], Record] | None = None,
        description: str = "classifying", title: str = "resnet-classify classify") -> int:
    """Classify the job's inputs and write the records (with `previous`, what --resume keeps, each record in
    its place); returns the exit code. The output is opened only once the engine has its first record (a usage
    error while the model loads leaves an earlier --output as it was), and finished (renamed into place) even
    when the run is interrupted, unless it resumes and was stopped before the kept records were confirmed
    (resume.Resume); an unexpected error leaves an earlier file untouched. `report`: also an HTML
    page (report.py), finished like the output. `each`: what a command does to each record before it is
    written (explain writes the overlay); `description` names the work on the progress bar, `title` the
    report."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    reorder = None if previous is None else (lambda records: previous.in_input_order(records, job.inputs))

    color = isatty(stdout) if fmt is Format.table and not output else False
    # A bar when results go elsewhere: results printed on the same terminal show the progress themselves, and a
    # bar redrawn between them would garble both. A table on the terminal already shows each failure in its
    # place, in red: the same line again on stderr, the same terminal, would only repeat it.
    stream = RecordStream(job, description, bar=not (isatty(stdout) and not output),
                          failure_lines=not (color and isatty(stderr)), stderr=stderr, records=reorder)
    explain = job.task.name == "explain"  # the csv writer adds the explanation's columns
    writer, failed, ok = None, 0, False
    page = None
    if report:
        from ..report import HtmlReport

        page = HtmlReport(report, title=title, subtitle=f"{job.weights.arch.name}, {job.weights.name}")
    with stream:
        try:
            for rec in stream:
                if each is not None:
                    done = each(rec)
                    if rec.ok and not done.ok and stream.failure_lines:  # its file could not be written
                        stream.say(failure_line(done))
                    rec = done
                if writer is None:
                    writer = open_writer(fmt, output, stdout=stdout, color=color, replace=previous is not None,
                                         explain=explain)
                writer.write(rec)
                if page is not None:
                    page.add(rec)
                failed += not rec.ok
            if writer is None:
                writer = open_writer(fmt, output, stdout=stdout, color=color, replace=previous is not None,
                                     explain=explain)
            ok = previous is None or previous.confirmed
        finally:
            if writer is not None:
                writer.close(ok=ok)
            if page is not None:
                page.close(ok=ok)
        code = stream.exit_code(failed)
    if writer.count == 0 and fmt is Format.table and not job.options.quiet:
        eprint("no images to classify", stderr)
    if stream.interrupted and not ok:  # even with --quiet
        eprint(f"interrupted before a kept result could be checked against this run: {output} is left as it was",
               stderr)
    elif stream.interrupted:  # even with --quiet: the user must learn how to continue
        where = f" to {output}" if output else ""
        if output and not explain:
            where += "; add --resume to the same command to continue"
        eprint(f"interrupted: {writer.count} record{'s' if writer.count != 1 else ''} written{where}", stderr)
    return code

