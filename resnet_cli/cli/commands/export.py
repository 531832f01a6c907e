"""`resnet-classify export`: a model as an ONNX file or an OpenVINO IR, checked against the original first.

    --arch/--weights (published, checkpoint, a model made by train) --> weights.load --> models/export.py:
        torch.onnx.export (+ openvino.convert_model) --> parity check on --check DIR --> FILE (renamed into place)

The check photos: --check DIR (its first MAX_CHECK images by name, decoded as classify decodes them), else the
sample photos of a source checkout, else SYNTHETIC seeded random images (with a note that photos like the
user's are a better test). The report (stdout): a few lines on a terminal, else one JSON object.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ...core.errors import UsageError
from ...models.formats import DEFAULT_MIN_AGREEMENT
from ..options import ArchOpt, CropOpt, LabelsOpt, OfflineOpt, QuietOpt, ResizeOpt

MAX_CHECK = 32  # images the parity check runs, each alone and all together
INT8_CHECK = 500  # held-out images the int8 agreement is measured on
CALIBRATE = 300  # calibration images (NNCF's default subset size)
SYNTHETIC = 8
SAMPLES = Path(__file__).resolve().parents[3] / "sample_images"  # a source checkout's sample photos


class ExportFormat(str, Enum):
    onnx = "onnx"
    openvino = "openvino"


EXTENSION = {"onnx": ".onnx", "openvino": ".xml"}


def command(
    output: Annotated[str, typer.Option(
        "--output", "-o", metavar="FILE", show_default=False,
        help="Where the model goes: FILE.onnx, or FILE.xml (and FILE.bin beside it) for OpenVINO.")],
    arch: ArchOpt = None,
    weights: Annotated[str, typer.Option(
        "--weights", "-w", metavar="WEIGHTS",
        help="Published weights (DEFAULT, IMAGENET1K_V1, ... as classify takes them), a checkpoint file (.pth/.pt, "
        ".safetensors) or a model made by train.")] = "DEFAULT",
    format: Annotated[Optional[ExportFormat], typer.Option(
        "--format", "-f", case_sensitive=False, show_default=False,
        help="onnx or openvino. Default: from -o's extension (.onnx, .xml).")] = None,
    check: Annotated[Optional[str], typer.Option(
        "--check", metavar="DIR", show_default=False,
        help=f"Photos for the parity check (the first {MAX_CHECK} by name). Default: the sample photos; with "
        "--int8 required (held-out photos, apart from --calibrate).")] = None,
    opset: Annotated[Optional[int], typer.Option(
        "--opset", metavar="N", show_default=False, help="ONNX opset, 18 to 23. Default: 20.")] = None,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Quantize to int8 (post-training, calibrated on --calibrate); refused below --min-agreement.")
    ] = False,
    calibrate: Annotated[Optional[str], typer.Option(
        "--calibrate", metavar="DIR", show_default=False,
        help="With --int8: photos like yours to calibrate on (up to 300 by name); keep --check's photos apart.")
    ] = None,
    min_agreement: Annotated[float, typer.Option(
        "--min-agreement", metavar="F", help="With --int8: the least top-1 agreement with fp32 on --check's photos.")
    ] = DEFAULT_MIN_AGREEMENT,
    keep_fp32: Annotated[Optional[str], typer.Option(
        "--keep-fp32", metavar="LAYERS", show_default=False,
        help="With --int8: layers left in fp32, by module name (conv1,fc,layer4 or a block: layer4.1).")] = None,
    labels: LabelsOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a model to ONNX or OpenVINO; written only if it gives the original's answers (parity check)."""
    from ...run.job import ModelOptions

    ext = os.path.splitext(output)[1].lower()
    fmt = format.value if format is not None else {v: k for k, v in EXTENSION.items()}.get(ext)
    if fmt is None:
        raise UsageError(f"-o {output}: give a .onnx or .xml file name, or --format")
    if ext != EXTENSION[fmt]:
        raise UsageError(f"-o {output}: a {fmt} model is written as a {EXTENSION[fmt]} file")
    from ...models.formats import bin_path, need
    from ...outputs.paths import check_location, check_outputs

    need(fmt)
    from ...models.export import MAX_OPSET, MIN_OPSET

    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset must be from {MIN_OPSET} to {MAX_OPSET} (got {opset})")
    check_location("--output", output)
    outputs = [("--output", output)]
    if fmt == "openvino":  # the .bin beside it: a name the tool chose, never a link followed
        weights_file = bin_path(output)
        if os.path.islink(weights_file) or (os.path.lexists(weights_file) and not os.path.isfile(weights_file)):
            raise UsageError(f"-o {output}: {weights_file} (its weights file) is a link or not a regular file; "
                             "remove it or choose another name")
        outputs.append(("--output", weights_file))
    resolved = ModelOptions(arch, weights, resize, crop, labels).resolve()
    if resolved.runtime != "torch":
        raise UsageError(f"--weights {weights}: already an exported model; export from the checkpoint it came from")
    if resolved.spec is not None and resolved.spec.quantized:
        raise UsageError(f"--weights {weights}: torchvision's int8 weights run in torch only (fbgemm); for an int8 "
                         f"file, export the float weights they quantize with --int8: -w "
                         f"{resolved.arch.enum}.{resolved.spec.unquantized} --int8 --calibrate DIR")
    if not int8 and (calibrate or keep_fp32 or min_agreement != DEFAULT_MIN_AGREEMENT):
        raise UsageError("--calibrate, --min-agreement and --keep-fp32 go with --int8")
    if int8 and not calibrate:
        raise UsageError("--int8 needs --calibrate DIR: photos like the ones the model will classify")
    if int8 and not check:  # the sample photos could be the calibration photos: the check must be held out
        raise UsageError("--int8 needs --check DIR: held-out photos like yours, apart from --calibrate's")
    if int8:
        from ...models.int8 import check_min_agreement, need_int8

        need_int8(fmt)
        check_min_agreement(min_agreement)
    check_outputs([d for d in (check, calibrate) if d], outputs, recursive=False, reads=(weights, labels))
    sources = _check_sources(check, limit=INT8_CHECK if int8 else MAX_CHECK)
    calibration = _check_sources(calibrate, "--calibrate", CALIBRATE) if int8 else []
    if int8:
        _held_out(check, calibrate, sources, calibration)

    from ...models.export import export
    from ...models.weights import ensure_available, load

    ensure_available(resolved, offline=offline)
    loaded = load(resolved, offline=offline, quiet=quiet)
    batch, names, note = _check_images(sources, resolved.preprocess)
    if note and not quiet:
        from ...core.console import eprint

        eprint(note)
    if int8:
        _int8(loaded, resolved, fmt, output, calibration, batch, names, min_agreement, keep_fp32, opset, check,
              calibrate)
        return
    report = export(loaded.module, resolved, loaded.labels, fmt, output, batch, names, opset)
    report["parity"]["photos"] = check or (str(SAMPLES) if sources else f"{SYNTHETIC} synthetic images")
    _print(report)


def _check_sources(check: str | None, option: str = "--check", limit: int = MAX_CHECK) -> list:
    """The check images' sources: --check DIR's image files and those of its class folders one level down
    (sorted, at most `limit`), else the sample photos
    where they are, else [] (synthetic images). `option` names the option in messages."""
    from ...inputs.sources import Source, is_image_name

    folder = check if check else (str(SAMPLES) if SAMPLES.is_dir() else None)
    if folder is None:
        return []
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {folder}: not a folder")
    names = []  # the folder's image files, and those of its class folders one level down (DATA/<class>/*.jpg)
    try:
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if is_image_name(entry) and os.path.isfile(path):
                names.append(entry)
            elif os.path.isdir(path) and not os.path.islink(path):
                names += [os.path.join(entry, n) for n in sorted(os.listdir(path))
                          if is_image_name(n) and os.path.isfile(os.path.join(path, n))]
    except OSError as exc:
        raise UsageError(f"{option} {folder}: {exc.strerror or exc}") from None
    if not names:
        raise UsageError(f"{option} {folder}: no image files in it or in its class folders")
    return [Source(os.path.join(folder, n)) for n in names[:limit]]


def _held_out(check: str, calibrate: str, sources: list, calibration: list) -> None:
    """A usage error naming --check and --calibrate when they are the same folder or share a photo (the same
    bytes, by SHA-256, under any name): agreement measured on calibration photos says nothing."""
    import hashlib

    if os.path.realpath(check) == os.path.realpath(calibrate):
        raise UsageError(f"--check {check} and --calibrate {calibrate} are the same folder; the check needs "
                         "held-out photos, apart from the calibration photos")

    def digests(items: list) -> dict[str, str]:
        out = {}
        for s in items:
            h = hashlib.sha256()
            try:
                with open(s.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError:
                continue  # decoding names it later
            out.setdefault(h.hexdigest(), s.path)
        return out

    calibrated = digests(calibration)
    shared = [(path, calibrated[d]) for d, path in digests(sources).items() if d in calibrated]
    if shared:
        raise UsageError(f"--check {check} and --calibrate {calibrate} share {len(shared)} photo"
                         f"{'s' if len(shared) > 1 else ''} ({shared[0][0]} is {shared[0][1]}); the check needs "
                         "held-out photos, apart from the calibration photos")


def _check_images(sources: list, pre, option: str = "--check"):
    """((N, crop, crop, 3) uint8, names, note): the sources decoded as classify decodes them, or SYNTHETIC
    seeded random images when there are none. An image that cannot be read is a usage error naming it."""
    import torch

    from ...run.pipeline import prepare, stack

    if not sources:
        g = torch.Generator().manual_seed(0)
        batch = torch.randint(0, 256, (SYNTHETIC, pre.crop, pre.crop, 3), dtype=torch.uint8, generator=g)
        return batch, [f"<synthetic {i}>" for i in range(SYNTHETIC)], (
            "no sample photos here: the parity check runs on synthetic images; give --check DIR with photos "
            "like yours for a check that means more")
    prepared = [prepare(s, pre) for s in sources]
    for p in prepared:
        if p.error is not None:
            raise UsageError(f"{option}: {p.path}: {p.error.message}")
    return stack(prepared, pre.crop), [p.path for p in prepared], None


def _print(report: dict) -> None:
    from ...core.console import isatty
    from ...outputs.writers import dumps

    if not isatty(sys.stdout):
        sys.stdout.write(dumps(report) + "\n")
        sys.stdout.flush()
        return
    if report.get("precision") == "int8":
        _print_int8(report)
        return
    p = report["parity"]
    sizes = ", ".join(f"{path} ({size / 1e6:.1f} MB)" for path, size in report["files"].items())
    print(f"{report['model']}: {report['arch']} from {report['weights']}, {report['format']}"
          f"{' opset ' + str(report['opset']) if report['format'] == 'onnx' else ''}; wrote {sizes}")
    print(f"parity check on {p['images']} images ({p['photos']}) at batch {' and '.join(map(str, p['batches']))}: "
          f"top-5 identical; max probability difference {p['max_prob_diff']:.2e} (tolerance "
          f"{p['tolerance']['probability']:g}), max feature difference {p['max_feature_diff']:.2e} of the largest")
    print(f"export {report['seconds']['export']:.1f} s, check {report['seconds']['check']:.1f} s")


def _int8(loaded, resolved, fmt, output, calibration, batch, names, min_agreement, keep_fp32, opset, photos,
          calibrate) -> None:
    """`export --int8`: models/int8.py on the calibration and check photos; the report as `_print` gives it."""
    from ...models.int8 import export_int8

    if not calibration:
        raise UsageError(f"--calibrate {calibrate}: no image files in it")
    calib, _, _ = _check_images(calibration, resolved.preprocess, "--calibrate")
    keep = tuple(k.strip() for k in (keep_fp32 or "").split(",") if k.strip())
    report = export_int8(loaded.module, resolved, loaded.labels, fmt, output, calib, batch, names,
                         min_agreement=min_agreement, keep=keep, opset=opset)
    report["agreement"]["photos"] = photos
    _print(report)


def _print_int8(report: dict) -> None:
    a = report["agreement"]
    sizes = ", ".join(f"{path} ({size / 1e6:.1f} MB)" for path, size in report["files"].items())
    kept = f", {', '.join(report['kept_fp32'])} kept in fp32" if report["kept_fp32"] else ""
    print(f"{report['model']}: int8 {report['arch']} from {report['weights']} ({report['method']}, "
          f"{report['calibration_images']} calibration photos{kept}); wrote {sizes}")
    print(f"agreement with fp32 on {a['images']} held-out photos ({a['photos']}): top-1 {a['top1']:.1%} "
          f"(at least {report['min_agreement']:g}), top-5 overlap {a['top5_overlap']:.1%}")
    print(f"quantize {report['seconds']['quantize']:.1f} s, check {report['seconds']['check']:.1f} s")
