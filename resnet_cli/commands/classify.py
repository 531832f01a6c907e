"""`resnet-classify classify` (the default command): the top-k ImageNet classes of each input, in input order.

    options --> job.make_job (checked, no torch) --> engines.records(job) --> write_records --> exit code

This file owns what classify adds around an engine: the output file and its format, `--resume`, per-file
lines on stderr, the progress bar, and the exit code.
"""

from __future__ import annotations

import sys
from typing import Annotated, BinaryIO, Callable, Optional, TextIO

import typer

from ..console import eprint, isatty
from ..errors import UsageError
from ..job import Engine, Job, Precision, make_job
from ..options import (ArchOpt, BatchSizeOpt, CropOpt, DeviceOpt, EngineOpt, FastDecodeOpt, InputsArg, LabelsOpt,
                       NullOpt, OfflineOpt, OutputOpt, PrecisionOpt, QuietOpt, RayAddressOpt, RecursiveOpt, ResizeOpt,
                       TopkOpt, WeightsOpt, WorkersOpt)
from ..records import Record
from ..report import THUMB as REPORT_VIEW
from .stream import RecordStream, failure_line
from ..writers import Format, format_for_output, open_writer

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
    job = make_job(inputs, arch=arch, weights=weights, topk=topk, device=device, precision=precision,
                   batch_size=batch_size, workers=workers, recursive=recursive, null_separated=null,
                   offline=offline, labels=labels, fast_decode=fast_decode, resize=resize, crop=crop, quiet=quiet,
                   engine=engine, ray_address=ray_address, view=REPORT_VIEW if report else None)
    previous = []
    if resume:
        from ..resume import previous_successes

        previous = previous_successes(output, fmt, job.weights, topk)
        job.inputs.skip = frozenset(r.path for r in previous)
    raise typer.Exit(run(job, fmt, output, previous, report=report))


def check_output(fmt: Format | None, output: str | None, resume: bool) -> Format:
    """The output's format, with the rules that involve --output: checked before any work starts."""
    if resume and not output:
        raise UsageError("--resume needs --output FILE (the file to resume)")
    if output:
        check_writable(output)
    return fmt or format_for_output(output, stdout_is_tty=isatty(sys.stdout))


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


def run(job: Job, fmt: Format, output: str | None, previous: list[Record] = (), *, stdout: BinaryIO | None = None,
        stderr: TextIO | None = None, report: str | None = None, each: Callable[[Record], Record] | None = None,
        description: str = "classifying", title: str = "resnet-classify classify") -> int:
    """Classify the job's inputs and write the records (with `previous`, the records --resume keeps, each in
    its place); returns the exit code. The output is opened only once the engine has its first record (a usage
    error while the model loads leaves an earlier --output as it was), and finished (renamed into place) even
    when the run is interrupted; an unexpected error leaves an earlier file untouched. `report`: also an HTML
    page (report.py), finished like the output. `each`: what a command does to each record before it is
    written (explain writes the overlay); `description` names the work on the progress bar, `title` the
    report."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    reorder = _in_place(job, previous) if previous else None

    color = isatty(stdout) if fmt is Format.table and not output else False
    # A bar when results go elsewhere: results printed on the same terminal show the progress themselves, and a
    # bar redrawn between them would garble both. A table on the terminal already shows each failure in its
    # place, in red: the same line again on stderr, the same terminal, would only repeat it.
    stream = RecordStream(job, description, bar=not (isatty(stdout) and not output),
                          failure_lines=not (color and isatty(stderr)), stderr=stderr, records=reorder)
    explain = job.explain is not None  # the csv writer adds the explanation's columns
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
                    writer = open_writer(fmt, output, stdout=stdout, color=color, replace=bool(previous),
                                         explain=explain)
                writer.write(rec)
                if page is not None:
                    page.add(rec)
                failed += not rec.ok
            if writer is None:
                writer = open_writer(fmt, output, stdout=stdout, color=color, replace=bool(previous),
                                     explain=explain)
            ok = True
        finally:
            if writer is not None:
                writer.close(ok=ok)
            if page is not None:
                page.close(ok=ok)
        code = stream.exit_code(failed)
    if writer.count == 0 and fmt is Format.table and not job.quiet:
        eprint("no images to classify", stderr)
    if stream.interrupted:  # even with --quiet: the user must learn how to continue
        where = f" to {output}" if output else ""
        if output and not explain:
            where += "; add --resume to the same command to continue"
        eprint(f"interrupted: {writer.count} record{'s' if writer.count != 1 else ''} written{where}", stderr)
    return code


def _in_place(job: Job, previous: list[Record]):
    """The engine's records with the ones --resume keeps back in their places (resume.in_input_order)."""
    from ..resume import in_input_order

    return lambda records: in_input_order(records, job.inputs, previous)
