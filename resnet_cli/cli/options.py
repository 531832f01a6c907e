"""Command-line options that several commands share, declared once (Typer `Annotated` aliases).

Choices are enums, so help, parser and code agree; numeric options carry their minimum; defaults that depend
on the situation (the format, the batch size) are None here and decided by the command. Nothing heavy is
imported: `--help` must answer at once.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..models.devices import Precision
from ..run.job import Engine
from ..outputs.writers import Format


InputsArg = Annotated[list[str], typer.Argument(
    metavar="INPUT...", show_default=False,
    help="Image files, folders, quoted globs ('photos/*.jpg'), http(s) URLs, s3:// or gs:// objects and "
    "prefixes, or - to read paths from stdin (one a line).")]
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", "-a", metavar="ARCH", show_default=False,
    help="Architecture (see `resnet-classify models`). Default: resnet50, or the one --weights names.")]
WeightsOpt = Annotated[str, typer.Option(
    "--weights", "-w", metavar="WEIGHTS",
    help="Published weights (DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2 or an enum-qualified name such as "
    "ResNet50_Weights.IMAGENET1K_V2), a checkpoint file (.pth/.pt in torchvision's layout, or .safetensors), or a "
    "model `export` wrote (.onnx, OpenVINO .xml).")]
TopkOpt = Annotated[Optional[int], typer.Option(
    "--topk", "-k", min=1, metavar="K", show_default=False,
    help="How many classes to report per image. Default: 5, or every class of a model with fewer.")]
OutputOpt = Annotated[Optional[str], typer.Option(
    "--output", "-o", metavar="FILE", show_default=False,
    help="Write results to FILE instead of stdout (json and csv appear atomically).")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps (with --engine ray: the cluster's).")]
# The commands without --engine (explain, similar, train) say only what they do.
LocalDeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", min=1, metavar="N", show_default=False,
    help="Images gathered before they go to the network, and written, together (memory and latency, never the "
    "answers: the network always runs chunks of 8 images on a CPU, 64 on a GPU). Default: 8 on CPU, 64 on GPU.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")]
NullOpt = Annotated[bool, typer.Option(
    "--null", "-0", help="With -, paths on stdin are NUL-separated (find -print0).")]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline", envvar="RESNET_CLASSIFY_OFFLINE", show_envvar=False,
    help="Never use the network: weights must be cached, URLs and s3:// inputs fail "
    "(env: RESNET_CLASSIFY_OFFLINE=1).")]
LabelsOpt = Annotated[Optional[str], typer.Option(
    "--labels", metavar="FILE", show_default=False,
    help="Class names for a custom checkpoint, one a line. Default: ImageNet's for 1000 classes, else class_N.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", case_sensitive=False,
    help="fp32 (exact), bf16 (CPUs with AVX-512 BF16 or AMX, GPUs) or fp16 (GPUs). bf16 and fp16 are "
    "approximate: faster, but probabilities move (typically by a few hundredths) and a close top-1 can change "
    "(docs/benchmarks.md).")]
FastDecodeOpt = Annotated[bool, typer.Option(
    "--fast-decode", help="Let JPEGs decode at reduced scale (at least twice the resize target) before the exact "
    "resize: much faster on large photos, near-identical results.")]
ResizeOpt = Annotated[Optional[int], typer.Option(
    "--resize", min=1, metavar="N", show_default=False,
    help="Resize the shorter side to N (default: the weights' own).")]
CropOpt = Annotated[Optional[int], typer.Option(
    "--crop", min=1, metavar="N", show_default=False,
    help="Center-crop to NxN (default: the weights' own); alone, resize keeps the weights' crop ratio.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=1, metavar="N", show_default=False,
    help="Parallelism. --engine local: decode threads (default: one per core). --engine ray: model actors "
    "(default: one per CPU of the cluster, or one per GPU).")]
TtaOpt = Annotated[bool, typer.Option(
    "--tta", help="Test-time augmentation: average the probabilities of each image and its mirror image (twice "
    "the compute).")]
LocalWorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=1, metavar="N", show_default=False, help="Decode threads (default: one per core).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no per-file error lines on stderr.")]
EngineOpt = Annotated[Engine, typer.Option(
    "--engine", case_sensitive=False,
    help="local, or ray to run on a Ray cluster (needs pip install 'resnet-classify[ray]').")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", metavar="ADDRESS", show_default=False,
    help="With --engine ray: the cluster's address (default: RAY_ADDRESS, else a local Ray).")]
FormatOpt = Annotated[Optional[Format], typer.Option(
    "--format", "-f", case_sensitive=False, show_default=False,
    help="Default: a table on a terminal, else jsonl; with --output, by the file's extension (.json, .csv, "
    ".txt = table, else jsonl).")]
ReportOpt = Annotated[Optional[str], typer.Option(
    "--report", metavar="FILE.html", show_default=False,
    help="Also write a self-contained HTML page to browse the results: a card per input with its thumbnail "
    "and labels, search, sort and filters.")]
