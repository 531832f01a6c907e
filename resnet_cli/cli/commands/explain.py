"""`resnet-classify explain`: where in each photo the network found its answer.

    options --> job.make_job(task=Explain, view_size=1024) --> engines.local: the classify forward pass, plus
        cam.py's map from the chosen block --> overlay.render --> overlay PNG (and --maps .npy) in --out
        --> classify's record plus "explanation" --> classify's writers (and --report)

The records are classify's to the byte (same forward pass); what explain adds is documented in docs/explain.md.
Choices made here:
- One overlay per successful input, named after the input (`dog.jpg` -> `dog.png`), `-2`, `-3` ... when two
  inputs of the run share a name; files of an earlier run in --out are replaced, never numbered around. A
  symlink (or a folder) at such a name is never followed or replaced, and an overlay that cannot be written
  is that input's `write_failed` record: the run goes on. --out is checked against the inputs first
  (outputs.check).
- The local engine only: the maps need the activations' gradients, which the Ray engine's actors do not
  return. `--resume` is classify's: an explain run is redone whole (its files are replaced atomically).
"""

from __future__ import annotations

import dataclasses
import enum
import os
from typing import Annotated

import typer

from ...core.errors import UsageError
from ...models.devices import Precision
from ...core.errors import WRITE_FAILED
from ...run.job import InputOptions, ModelOptions, RunOptions, make_job
from ..options import (ArchOpt, BatchSizeOpt, CropOpt, FastDecodeOpt, InputsArg, LabelsOpt, LocalDeviceOpt,
                       LocalWorkersOpt, NullOpt, OfflineOpt, OutputOpt, PrecisionOpt, QuietOpt, RecursiveOpt, ResizeOpt,
                       TopkOpt, WeightsOpt)
from ...core.records import Failure, Record, Success
from ..options import FormatOpt, ReportOpt
from ...outputs.paths import check_output, check_outputs, check_report
from .stream import write_records


class Method(str, enum.Enum):
    gradcam = "gradcam"
    gradcampp = "gradcam++"
    layercam = "layercam"


def command(
    inputs: InputsArg,
    method: Annotated[Method, typer.Option(
        "--method", "-m", case_sensitive=False,
        help="gradcam (Grad-CAM), gradcam++ (Grad-CAM++) or layercam (LayerCAM).")] = Method.gradcam,
    layer: Annotated[str, typer.Option(
        "--layer", "-l", metavar="LAYER",
        help="Where to take the map: a stage (layer1 ... layer4: its last block) or a block (layer4.2), as "
        "`resnet-classify arch ARCH --blocks` names them.")] = "layer4",
    target: Annotated[str, typer.Option(
        "--target", "-t", metavar="top1|INDEX|LABEL",
        help="The class to explain: each image's top-1, or one class by index, WordNet id or name.")] = "top1",
    out: Annotated[str, typer.Option(
        "--out", metavar="DIR", help="Folder for the overlays (one PNG per input, named after it), created if "
        "missing.")] = "explanations",
    maps: Annotated[bool, typer.Option(
        "--maps", help="Also write each raw map as NAME.npy: float32, crop x crop, in [0, 1].")] = False,
    report: ReportOpt = None,
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    topk: TopkOpt = None,
    format: FormatOpt = None,
    output: OutputOpt = None,
    device: LocalDeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = None,
    workers: LocalWorkersOpt = None,
    recursive: RecursiveOpt = False,
    null: NullOpt = False,
    offline: OfflineOpt = False,
    labels: LabelsOpt = None,
    fast_decode: FastDecodeOpt = False,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Show where the network looked: classify, and draw each image's class activation map over it."""
    from ...models import cam
    from ...outputs.overlay import OVERLAY_SIZE

    fmt = check_output(format, output, False)
    check_report(report)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file; give a folder")
    check_outputs(inputs, [("--output", output), ("--report", report)], recursive=recursive, reads=(weights, labels),
                  folder=("--out", out), folder_extensions=(".png", ".npy") if maps else (".png",))
    _check_out(out)
    from ...run.tasks import Explain

    options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         fast_decode=fast_decode, offline=offline, quiet=quiet)
    resolved = ModelOptions(arch, weights, resize, crop, labels).resolve()
    if resolved.spec is not None and resolved.spec.quantized:
        raise UsageError(f"explain needs a float network (its maps are gradients); {resolved.name} are int8 weights: "
                         f"explain with {resolved.arch.enum}.{resolved.spec.unquantized}, the weights they quantize")
    if resolved.runtime != "torch":
        raise UsageError(f"--weights {weights}: an exported model; explain needs the torch network's gradients: "
                         "give the checkpoint it was exported from")
    block = cam.resolve_layer(layer, resolved.arch)
    task = Explain(method.value, block, cam.block_position(block, resolved.arch), _target(target, resolved),
                   topk)
    job = make_job(inputs, resolved, task, options, listing=InputOptions(recursive, null), view_size=OVERLAY_SIZE)
    raise typer.Exit(write_records(job, fmt, output, report=report, each=_Files(out, maps, keep=bool(report)),
                         description="explaining", title="resnet-classify explain"))


def _check_out(out: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot create files in it")


def _target(target: str, resolved) -> int | None:
    """--target as a class index (None: each image's top-1); a label that names no class is a usage error."""
    if target.strip().lower() == "top1":
        return None
    from ...analysis import labelled
    from ...models.weights import class_names

    classes = class_names(resolved)
    try:
        return labelled.match([target.strip()], classes, model=resolved.arch.name)[target.strip()]
    except UsageError as exc:
        raise UsageError(f"--target {target}: {exc}") from None


class _Files:
    """Writes each success's overlay (and map) and returns its record with their paths."""

    def __init__(self, out: str, maps: bool, keep: bool) -> None:
        from ...outputs.overlay import Names

        self.out = out
        self.maps = maps
        self.keep = keep  # the drawn overlay stays on the record for the report's thumbnail
        self.names = Names()

    def __call__(self, record: Record) -> Record:
        from ...outputs.overlay import render, save_map, save_overlay

        if not isinstance(record, Success) or record.explanation is None:
            return record
        e = record.explanation
        stem = os.path.join(self.out, self.names(record.path))
        picture = render(record.view, e.cam)
        written = stem + ".png"
        try:
            save_overlay(picture, written)
            if self.maps:
                written = stem + ".npy"
                save_map(e.cam, written)
        except OSError as exc:  # a symlink at the name, a name too long, a full disk: this input's failure
            return Failure(record.path, WRITE_FAILED, f"cannot write {written}: {exc.strerror or exc}")
        e = dataclasses.replace(e, overlay=stem + ".png", map=stem + ".npy" if self.maps else None,
                                picture=picture if self.keep else None, cam=None)
        return dataclasses.replace(record, explanation=e, view=record.view if self.keep else None)
