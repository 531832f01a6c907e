"""`export --int8`: post-training static quantization of a float network, calibrated on the user's photos and
checked against the float network on held-out photos before anything is written.

- The graph: export.to_onnx's fp32 ONNX graph (input "input", outputs "logits" and "features"), then
  - `--format openvino`: openvino.convert_model, then NNCF's `nncf.quantize` (post-training quantization: int8
    weights per output channel, symmetric; int8 activations per tensor from the calibration photos' ranges;
    fast bias correction), saved with fp32 for what stays float (compress_to_fp16=False);
  - `--format onnx`: ONNX Runtime's `quantize_static`, QDQ format, per-channel int8 weights, uint8 activations
    (MinMax calibration): QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels.
  On this tool's benchmark CPU (AVX-512 VNNI) the OpenVINO IR ran a resnet18 1.8x faster than the ONNX QDQ model
  and torch's own x86 FX quantization, with the same agreement (docs/export.md): OpenVINO is the recommended
  int8 format.
- The check (always): the int8 file run exactly as `classify` runs it (runtimes.ExportedPredictor: fixed-shape
  chunks, softmax, top-5) and the float network run as `classify` runs it (inference.Predictor, fp32), on the
  held-out photos: the top-1 agreement (the share of photos whose top-1 class is the same) and the mean top-5
  overlap (the share of the float top-5 the int8 top-5 keeps). Below `min_agreement` (DEFAULT_MIN_AGREEMENT) the
  model is refused and nothing is written; the refusal says which layers kept in fp32 bring the agreement back
  (`sensitivity`: the stem conv and the head, then each stage, measured by quantizing again without them), or
  that none does and the calibration photos are the thing to change.
- Layers kept in fp32 (`keep`): torchvision's module names (conv1, layer1 ... layer4, layer4.1, fc; a conv's
  name covers the BatchNorm folded into it), matched against the module each ONNX node came from (the torch
  exporter's `pkg.torch.onnx.name_scopes` node metadata); for OpenVINO those nodes are then found among the
  converted model's operations (`openvino_names`: the converter renames a biased Conv or MatMul
  "<node>/WithoutBiases"), and NNCF's IgnoredScope validates that each name exists.
- The metadata written is read back (export.read_back) and must give the model's labels and preprocessing; the
  int8 side of the check runs with the preprocessing read back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch

from ..core.errors import UsageError
from .formats import DEFAULT_MIN_AGREEMENT, INPUT, METADATA_KEY, ExportedModel, need, read_blobs
from .preprocess import normalize
from .resolve import Resolved

MAX_CALIBRATION = 300  # calibration images used (NNCF's own default subset size)
CALIBRATION_BATCH = 8
CANDIDATES = (("conv1", "fc"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))  # what `sensitivity` tries
METHODS = {"openvino": "NNCF post-training quantization (OpenVINO)",
           "onnx": "ONNX Runtime quantize_static, QDQ"}


@dataclass
class Agreement:
    """The int8 model against the float one on `images` held-out photos: `top1` the share whose top-1 class is
    the same, `top5` the mean share of the float top-5 the int8 top-5 keeps, `changed` the photos whose top-1
    changed."""

    images: int
    top1: float
    top5: float
    changed: list[str]

    def as_dict(self) -> dict:
        return {"images": self.images, "top1": round(self.top1, 4), "top5_overlap": round(self.top5, 4),
                "top1_changed": self.changed[:10]}


def node_scopes(proto) -> dict[str, set[str]]:
    """{ONNX node name: the torch module paths it came from}, from the torch exporter's name_scopes metadata,
    without the export wrapper's "net." prefix; a folded BatchNorm's conv answers to the conv's name too."""
    import ast

    scopes = {}
    for node in proto.graph.node:
        raw = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        names = set()
        for s in (ast.literal_eval(raw) if raw else []):
            if s.startswith("net."):
                s = s[len("net."):]
                names.add(s)
                head, _, last = s.rpartition(".")
                if last.startswith("bn"):  # conv+BatchNorm folded: the node is the conv's too
                    names.add(f"{head}.conv{last[2:]}".lstrip("."))
                if last == "1" and head.endswith("downsample"):
                    names.add(f"{head}.0")
        scopes[node.name] = names
    return scopes


def no_layer(name: str) -> str:
    """The usage error's text for a --keep-fp32 name that is no layer of the network."""
    return (f"--keep-fp32 {name}: no layer of that name in the network; use torchvision's module names: conv1, "
            "layer1, layer2, layer3, layer4, fc, or a block such as layer4.1")


def kept_nodes(scopes: dict[str, set[str]], keep: tuple[str, ...]) -> list[str]:
    """The nodes of the modules named in `keep` (and of their submodules). Raises UsageError for a name that
    matches no node, listing the stages."""
    nodes = []
    for name in keep:
        found = [n for n, s in scopes.items() if any(x == name or x.startswith(name + ".") for x in s)]
        if not found:
            raise UsageError(no_layer(name))
        nodes += [n for n in found if n not in nodes]
    return nodes


def _calibration_batches(calib_u8: torch.Tensor, preprocess) -> list:
    x = normalize(calib_u8[:MAX_CALIBRATION], preprocess).contiguous()
    return [part.numpy() for part in x.split(CALIBRATION_BATCH)]


def _quantize_onnx(fp32_path: str, out_path: str, batches: list, exclude: list[str]) -> None:
    need("onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.parts = iter(batches)

        def get_next(self):
            part = next(self.parts, None)
            return None if part is None else {INPUT: part}

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static's advice to pre-process, on every call, to the root logger
    try:
        quantize_static(fp32_path, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude)
    finally:
        root.setLevel(level)


def _quantize_openvino(fp32_path: str, xml: str, batches: list, exclude: list[str], meta: dict | None) -> None:
    import logging

    ov = need("openvino")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime", as NNCF loads
    import contextlib
    import io

    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = ov.convert_model(fp32_path)
    names = openvino_names(model, exclude)
    samples = [b[i:i + 1] for b in batches for i in range(len(b))]
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                  ignored_scope=nncf.IgnoredScope(names=names, validate=True) if names else None)
    if meta is not None:
        quantized.set_rt_info(json.dumps(meta), [METADATA_KEY])
    ov.save_model(quantized, xml, compress_to_fp16=False)


def openvino_names(model, nodes: list[str]) -> list[str]:
    """The operations of the converted OpenVINO `model` (openvino.Model) that ONNX `nodes` became: the one of
    the same friendly name, and those the converter split it into, named "<node>/..." (a Gemm or a biased
    MatMul becomes "<node>/WithoutBiases" and an Add). Raises UsageError when a node became no operation (the
    layer would be quantized silently)."""
    ops = [op.get_friendly_name() for op in model.get_ops()]
    found = []
    for node in nodes:
        mine = [op for op in ops if op == node or op.startswith(node + "/")]
        if not mine:
            raise UsageError(f"--keep-fp32: the ONNX node {node} has no operation in the OpenVINO model; "
                             "export with --format onnx to keep these layers in fp32")
        found += [op for op in mine if op not in found]
    return found


def _set_onnx_metadata(path: str, meta: dict) -> None:
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save_model(proto, path)


def agreement(module, model: ExportedModel, preprocess, check_u8: torch.Tensor, names: list[str],
              reference: tuple | None = None, model_preprocess=None) -> tuple[Agreement, tuple]:
    """(Agreement, the float network's top-5) of the int8 `model` with the float `module` on `check_u8` ((N,
    crop, crop, 3) uint8), each run as `classify` runs it: the float one with `preprocess`, the int8 one with
    `model_preprocess` (what its file says; default `preprocess`). `reference`: the float top-5 from an earlier
    call."""
    from .inference import Predictor
    from .runtimes import ExportedPredictor

    k = min(5, model.num_classes)
    if reference is None:
        float_predictor = Predictor(module, preprocess, device=torch.device("cpu"), dtype=torch.float32)
        reference = float_predictor.classify(check_u8, k)
    int8 = ExportedPredictor(model, model_preprocess or preprocess, num_classes=model.num_classes)
    _, got = int8.classify(check_u8, k)
    want = reference[1]
    same = (got[:, 0] == want[:, 0]).tolist()
    overlap = [len(set(a) & set(b)) / k for a, b in zip(got.tolist(), want.tolist())]
    n = len(same)
    return Agreement(n, sum(same) / n, sum(overlap) / n, [names[i] for i, s in enumerate(same) if not s]), reference


def _quantize(fmt, fp32_path, work, batches, exclude, meta, labels) -> tuple[list[str], ExportedModel]:
    """One quantization into `work`: (the files, first the .bin for OpenVINO; the model as the runtime opens it)."""
    if fmt == "onnx":
        paths = [os.path.join(work, "int8.onnx")]
        _quantize_onnx(fp32_path, paths[0], batches, exclude)
        if meta is not None:
            _set_onnx_metadata(paths[0], meta)
    else:
        paths = [os.path.join(work, "int8.bin"), os.path.join(work, "int8.xml")]
        _quantize_openvino(fp32_path, paths[1], batches, exclude, meta)
    return paths, read_blobs(paths[-1], fmt, len(labels))


def sensitivity(module, fmt, fp32_path, work, batches, scopes, keep, preprocess, check_u8, names, labels,
                reference, min_agreement) -> list[dict]:
    """For each of CANDIDATES (beyond what `keep` already keeps): the agreement when it too stays fp32,
    best first, each {"keep": [...], "top1": ..., "top5_overlap": ..., "enough": bool}."""
    rows = []
    for extra in CANDIDATES:
        names_kept = tuple(dict.fromkeys(keep + extra))
        if names_kept == keep:
            continue
        sub = tempfile.mkdtemp(prefix="try-", dir=work)
        _, model = _quantize(fmt, fp32_path, sub, batches, kept_nodes(scopes, names_kept), None, labels)
        a, _ = agreement(module, model, preprocess, check_u8, names, reference)
        shutil.rmtree(sub, ignore_errors=True)
        rows.append({"keep": list(names_kept), "top1": round(a.top1, 4), "top5_overlap": round(a.top5, 4),
                     "enough": a.top1 >= min_agreement})
    rows.sort(key=lambda r: (-r["top1"], -r["top5_overlap"], len(r["keep"])))
    return rows


def advice(rows: list[dict], keep: tuple[str, ...]) -> str:
    """One sentence on what to do after a refusal, from `sensitivity`'s rows."""
    enough = [r for r in rows if r["enough"]]
    if enough:
        best = min(enough, key=lambda r: (len(r["keep"]), -r["top1"]))
        return (f"keeping {', '.join(best['keep'])} in fp32 brings it to {best['top1']:.1%}: add "
                f"--keep-fp32 {','.join(best['keep'])}")
    if rows and rows[0]["top1"] > 0:
        best = rows[0]
        return (f"no layer group kept in fp32 fixes it (the best, {', '.join(best['keep'])} in fp32, reaches "
                f"{best['top1']:.1%}): calibrate on more photos like the ones you will classify (--calibrate), "
                "or keep the model in fp32")
    return "calibrate on more photos like the ones you will classify (--calibrate), or keep the model in fp32"


def need_int8(fmt: str) -> None:
    """A one-line usage error naming the extra unless what `export --int8 --format fmt` needs is installed: the
    ONNX exporter (onnx, onnxscript) and ONNX Runtime for "onnx"; the ONNX exporter, OpenVINO and NNCF for
    "openvino" (not ONNX Runtime)."""
    from .formats import EXTRAS, RUNTIME_NAMES

    need(fmt)
    wanted = ["onnx", "onnxscript"] + (["nncf"] if fmt == "openvino" else [])
    for module in wanted:
        try:
            __import__(module)
        except ImportError:
            raise UsageError(f"export --int8 to {RUNTIME_NAMES[fmt]} needs the {module} package: pip install "
                             f"'resnet-classify[{EXTRAS[fmt]}]'") from None


def check_min_agreement(value: float) -> None:
    """A usage error unless 0 <= value <= 1."""
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--min-agreement must be from 0 to 1 (got {value})")


def export_int8(module, weights: Resolved, labels: tuple[str, ...], fmt: str, output: str, calib_u8: torch.Tensor,
                check_u8: torch.Tensor, names: list[str], *, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                keep: tuple[str, ...] = (), opset: int | None = None, advise: bool = True) -> dict:
    """Quantize `module` (model.ResNet, eval, fp32) to int8 as `fmt` ("openvino" or "onnx") at `output`,
    calibrated on `calib_u8` and checked on `check_u8` ((N, crop, crop, 3) uint8 images, the latter named
    `names`), `keep` (module names) left in fp32. Returns the report: {"model", "files": {path: bytes},
    "format", "precision": "int8", "arch", "weights", "method", "calibration_images", "kept_fp32",
    "agreement": {"images", "top1", "top5_overlap", "top1_changed"}, "min_agreement", "seconds"}. Raises
    UsageError, with `advice` (when `advise`), when the top-1 agreement is below `min_agreement`: nothing is
    left at `output` then (a file already there stays as it was)."""
    from .export import DEFAULT_OPSET, commit_files, export_targets, metadata, read_back, staged, to_onnx

    check_min_agreement(min_agreement)
    modules = dict(module.named_modules())
    for name in keep:
        if name not in modules or not name:
            raise UsageError(no_layer(name))
    need_int8(fmt)
    import onnx

    opset = opset or DEFAULT_OPSET
    targets = export_targets(output, fmt)
    with staged(output, targets, ".export-int8-") as (atomics, work):
        start = time.perf_counter()
        fp32_path = os.path.join(work, "fp32.onnx")
        to_onnx(module, weights.preprocess.crop, fp32_path, {}, opset)
        scopes = node_scopes(onnx.load(fp32_path, load_external_data=False))
        exclude = kept_nodes(scopes, keep)
        batches = _calibration_batches(calib_u8, weights.preprocess)
        meta = metadata(weights, labels, fmt, opset)
        meta.update(precision="int8", int8={"method": METHODS[fmt], "per_channel_weights": True,
                                            "calibration_images": min(len(calib_u8), MAX_CALIBRATION),
                                            "kept_fp32": list(keep)})
        paths, model = _quantize(fmt, fp32_path, work, batches, exclude, meta, labels)
        quantized = time.perf_counter() - start
        start = time.perf_counter()
        written = read_back(paths[-1], fmt, labels, weights.preprocess)
        agreed, reference = agreement(module, model, weights.preprocess, check_u8, names, model_preprocess=written)
        checked = time.perf_counter() - start
        if agreed.top1 < min_agreement:
            text = (f"int8 export refused, nothing written: top-1 agreement with fp32 is {agreed.top1:.1%} on "
                    f"{agreed.images} held-out photos (top-5 overlap {agreed.top5:.1%}), below --min-agreement "
                    f"{min_agreement:g}")
            if advise:
                rows = sensitivity(module, fmt, fp32_path, work, batches, scopes, keep, weights.preprocess, check_u8,
                                   names, labels, reference, min_agreement)
                text += "; " + advice(rows, keep)
            raise UsageError(text)
        commit_files(atomics, paths)
    return {"model": output, "files": {p: os.path.getsize(p) for p in targets}, "format": fmt, "precision": "int8",
            "arch": weights.arch.name, "weights": weights.name, "method": METHODS[fmt],
            "calibration_images": min(len(calib_u8), MAX_CALIBRATION), "kept_fp32": list(keep),
            "agreement": agreed.as_dict(), "min_agreement": min_agreement,
            "seconds": {"quantize": round(quantized, 3), "check": round(checked, 3)}}

