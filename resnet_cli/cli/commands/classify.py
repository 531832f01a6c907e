"""`resnet-classify classify` (the default command): the top-k ImageNet classes of each input, in input order.

    options --> api.build_job(Classify, ModelOptions, RunOptions) (resolved once, checked, no torch)
        --> engines.records(job) --> write_records --> exit code

This file owns classify's options and `--resume`; the checks of where it writes are paths.py's, and the loop
that writes the records (formats, the report, signals, the progress bar, per-file lines on stderr, the exit
code) is commands/stream.py's `write_records`, which explain shares.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ...models.devices import Precision
from ...run.job import Engine, InputOptions, ModelOptions, RunOptions
from ..options import (ArchOpt, BatchSizeOpt, CropOpt, DeviceOpt, EngineOpt, FastDecodeOpt, FormatOpt, InputsArg,
                       LabelsOpt, NullOpt, OfflineOpt, OutputOpt, PrecisionOpt, QuietOpt, RayAddressOpt, RecursiveOpt,
                       ReportOpt, ResizeOpt, TopkOpt, TtaOpt, WeightsOpt, WorkersOpt)
from ...outputs.paths import check_output, check_outputs, check_report
from ...outputs.report import THUMB as REPORT_VIEW
from .stream import write_records

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
    from ...api import build_job
    from ...run.tasks import Classify

    model = ModelOptions(arch, weights, resize, crop, labels)
    options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         fast_decode=fast_decode, engine=engine, ray_address=ray_address, offline=offline,
                         quiet=quiet)
    job = build_job(inputs, Classify(topk, tta=tta), model, options, listing=InputOptions(recursive, null),
                    view_size=REPORT_VIEW if report else None)
    previous = None
    if resume:
        from ...outputs import resume as resuming

        previous = resuming.load(output, fmt, job)
        if previous is not None:
            job.inputs.resume = previous.claim
    raise typer.Exit(write_records(job, fmt, output, previous, report=report))
