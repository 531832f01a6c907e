"""`export`: a loaded network written as an ONNX model or an OpenVINO IR, checked against itself first.

- The graph (formats.py): input "input" (N, 3, crop, crop) float32, already normalised; outputs "logits"
  (N, classes) and "features" (N, D), the pooled vector the head receives (so `embed` runs on the file). The
  batch axis is dynamic; height and width are the crop's.
- ONNX: torch.onnx.export with the dynamo exporter (torch.export, `dynamic_shapes` on the batch axis), opset
  DEFAULT_OPSET unless asked; all tensors inside the one file. The TorchScript exporter gave the same numbers
  here and exports 10x faster, but it is deprecated in torch and its tracing mutated the module it traced (the
  BatchNorm statistics of a model whose momentum was set): the network exported is a deep copy either way.
- OpenVINO: openvino.convert_model on that ONNX graph, openvino.save_model with compress_to_fp16=False (its
  default halves the weights to fp16, which moved a resnet18's probabilities by 1.6e-3 and changed a top-5).
- Metadata: the JSON a model made by `train` carries (arch, labels, preprocess, base_weights) plus the
  export's own fields (format, precision, opset, producer, source and its SHA-256 for a file), under the key
  "resnet_classify": an ONNX model's metadata_props, an IR's rt_info. resolve.exported_metadata reads it back.
- The metadata read back (`read_back`), always: the new file's metadata, read as `--weights FILE` reads it
  (resolve.exported_metadata), must give the original labels and preprocessing (resize, crop, mean, std,
  interpolation) exactly, or the export is refused.
- The parity check (`check_parity`), always: the new file, opened by the runtime exactly as `classify` opens
  it (runtimes.open_forward) and fed the images normalised with the preprocessing read back from it, and the
  original torch network (eager, float32) on the same images normalised with the original preprocessing, at
  batch 1 (each image alone), at batch N (all of them at once) and at classify's CPU chunk
  (devices.forward_batch("cpu"), the images repeated to fill it): top-5 indices identical, every
  probability within PROB_TOLERANCE, features within FEATURE_TOLERANCE of their largest value. The model is
  written under a temporary name in the target folder, checked there, and renamed into place only when it
  passes (the .bin before the .xml); a file that fails is deleted and the export is refused.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace

import torch

from ..core.errors import UsageError
from .formats import FEATURES, INPUT, LOGITS, METADATA_KEY, ExportedModel, bin_path, need, read_blobs, reason
from .preprocess import normalize
from .registry import Preprocess
from .resolve import Resolved

DEFAULT_OPSET = 20
MIN_OPSET = 18  # the dynamo exporter's lowest
MAX_OPSET = 23
PROB_TOLERANCE = 1e-4  # the largest difference in any probability an fp32 export may show
FEATURE_TOLERANCE = 1e-4  # the largest difference in a feature, relative to the largest feature
TOP = 5
FORMAT_NAMES = {"onnx": "ONNX", "openvino": "OpenVINO"}


@dataclass
class Parity:
    """What the parity check measured: images, batch sizes, the largest differences, whether it passed and,
    when not, why (the first failure found)."""

    images: int
    batches: tuple[int, ...]
    max_prob_diff: float = 0.0
    max_logit_diff: float = 0.0
    max_feature_diff: float = 0.0  # relative to the largest feature
    top5_identical: bool = True
    failure: str | None = None
    tolerance: dict = field(default_factory=lambda: {"probability": PROB_TOLERANCE, "feature": FEATURE_TOLERANCE})

    @property
    def ok(self) -> bool:
        return self.failure is None


class _Graph(torch.nn.Module):
    """The network with the outputs an exported file gives: (logits, features)."""

    def __init__(self, module) -> None:
        super().__init__()
        self.net = module

    def forward(self, x: torch.Tensor):
        features = self.net.features(x)
        return self.net.fc(features), features


def metadata(weights: Resolved, labels: tuple[str, ...], fmt: str, opset: int | None) -> dict:
    """The "resnet_classify" metadata of an export (module docstring); resolve.check_metadata accepts it."""
    from ..core import __version__

    pre = weights.preprocess
    meta = {"arch": weights.arch.name, "base_weights": weights.name, "labels": list(labels),
            "preprocess": {"resize": pre.resize, "crop": pre.crop, "mean": list(pre.mean), "std": list(pre.std),
                           "interpolation": pre.interpolation},
            "format": fmt, "precision": "fp32", "producer": f"resnet-classify {__version__}",
            "input": INPUT, "outputs": [LOGITS, FEATURES]}
    if opset is not None:
        meta["opset"] = opset
    if weights.spec is None and os.path.isfile(weights.name):
        digest = hashlib.sha256()
        with open(weights.name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        meta["source_sha256"] = digest.hexdigest()
    return meta


def to_onnx(module, crop: int, path: str, meta: dict, opset: int = DEFAULT_OPSET) -> None:
    """Write `module` (model.ResNet, eval) as a single-file ONNX model at `path`, batch axis dynamic, with `meta`
    as its metadata. Raises UsageError when the exporter fails."""
    import contextlib
    import io
    import warnings

    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter needs it
    except ImportError:
        raise UsageError("export needs the onnx package and onnxscript: pip install 'resnet-classify[onnx]'"
                         ) from None

    graph = _Graph(copy.deepcopy(module).float().eval())
    example = torch.zeros(2, 3, crop, crop)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph, (example,), None, dynamo=True, external_data=False, opset_version=opset,
                input_names=[INPUT], output_names=[LOGITS, FEATURES], verbose=False,
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    except Exception as exc:  # noqa: BLE001 - torch.onnx and torch.export raise many types of their own
        raise UsageError(f"the ONNX exporter failed: {reason(exc)}") from None
    proto = program.model_proto
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save_model(proto, path)


def to_openvino(onnx_path: str, xml: str, meta: dict) -> None:
    """Convert the ONNX model at `onnx_path` with OpenVINO's converter and save it as `xml` + its .bin, fp32
    weights (compress_to_fp16=False), `meta` in its rt_info."""
    ov = need("openvino")
    model = ov.convert_model(onnx_path)
    model.set_rt_info(json.dumps(meta), [METADATA_KEY])
    ov.save_model(model, xml, compress_to_fp16=False)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """As inference.Predictor: softmax, or for one logit z the sigmoid of (-z, z)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(torch.cat([-logits, logits], dim=1))
    return torch.softmax(logits, dim=1)


def check_parity(module, model: ExportedModel, batch_u8: torch.Tensor, preprocess, names: list[str],
                 model_preprocess=None) -> Parity:
    """The exported `model` against the torch `module` (model.ResNet, eval, float32) on `batch_u8`, (N, crop,
    crop, 3) uint8 images named `names`: each image alone (batch 1), all N at once (one image: twice), and
    classify's CPU chunk (devices.forward_batch("cpu") images, the N repeated to fill it). The torch side is
    fed the images normalised with `preprocess`, the exported side with `model_preprocess` (the preprocessing
    read back from the file; default `preprocess`). Top-5 must be identical and probabilities within
    PROB_TOLERANCE, features within FEATURE_TOLERANCE (relative); the first failure is named in `failure`."""
    from .devices import forward_batch
    from .runtimes import open_forward

    forward = open_forward(model)
    images = len(batch_u8)
    if images == 1:  # a larger batch needs two images: the one photo twice
        batch_u8, names = torch.cat([batch_u8, batch_u8]), names * 2
    n = len(batch_u8)
    chunk = forward_batch("cpu")
    if n != chunk:  # classify's fixed chunk: the images repeated (or cut) to fill it
        reps = -(-chunk // n)
        batch_u8, names = batch_u8.repeat(reps, 1, 1, 1)[:max(n, chunk)], (names * reps)[:max(n, chunk)]
    x = normalize(batch_u8, preprocess).contiguous()
    x_model = normalize(batch_u8, model_preprocess or preprocess).contiguous()
    with torch.inference_mode():
        ref_features = module.features(x)
        ref_logits = module.fc(ref_features)
    ref_probs = _probabilities(ref_logits)
    top = min(TOP, ref_probs.shape[1])
    ref_top = ref_probs.topk(top, dim=1).indices
    scale = float(ref_features.abs().max().clamp_min(1e-12))
    batches = (1, n) if n == chunk else (1, n, chunk)
    parity = Parity(images, batches)
    runs = [(1, [(i, x_model[i:i + 1]) for i in range(images)]), (n, [(0, x_model[:n])])]
    if n != chunk:
        runs.append((chunk, [(0, x_model[:chunk])]))
    for batch, parts in runs:
        for start, part in parts:
            logits = forward(part)
            features = forward.features(part) if forward.feature_dim is not None else None
            rows = slice(start, start + len(part))
            if logits.shape != ref_logits[rows].shape:
                parity.failure = f"batch {batch}: the model gives logits of shape {tuple(logits.shape)}"
                return parity
            probs = _probabilities(logits)
            parity.max_logit_diff = max(parity.max_logit_diff, float((logits - ref_logits[rows]).abs().max()))
            diff = float((probs - ref_probs[rows]).abs().nan_to_num(float("inf")).max())
            parity.max_prob_diff = max(parity.max_prob_diff, diff)
            if features is not None:
                parity.max_feature_diff = max(parity.max_feature_diff,
                                              float((features - ref_features[rows]).abs().max()) / scale)
            same = (probs.topk(top, dim=1).indices == ref_top[rows]).all(dim=1)
            if not bool(same.all()) and parity.failure is None:
                parity.top5_identical = False
                parity.failure = (f"batch {batch}: the top-{top} of {names[start + int((~same).nonzero()[0])]} "
                                  "differs from the original network's")
    if parity.failure is None and parity.max_prob_diff > PROB_TOLERANCE:
        parity.failure = f"a probability differs by {parity.max_prob_diff:.2e}, over the tolerance {PROB_TOLERANCE:g}"
    if parity.failure is None and parity.max_feature_diff > FEATURE_TOLERANCE:
        parity.failure = (f"a feature differs by {parity.max_feature_diff:.2e} of the largest, over the tolerance "
                          f"{FEATURE_TOLERANCE:g}")
    return parity


def read_back(path: str, fmt: str, labels: tuple[str, ...], preprocess: Preprocess) -> Preprocess:
    """The preprocessing (registry.Preprocess) the exported file at `path` gives, read back as `--weights FILE`
    reads it (resolve.exported_metadata). Raises UsageError, "export refused, nothing written", when its labels
    or preprocessing (resize, crop, mean, std, interpolation) differ from `labels` and `preprocess`."""
    from .resolve import exported_metadata

    meta = exported_metadata(path, fmt)
    p = meta["preprocess"]
    got = Preprocess(p["resize"], p["crop"], tuple(p["mean"]), tuple(p["std"]), p["interpolation"])
    want = Preprocess(preprocess.resize, preprocess.crop, tuple(preprocess.mean), tuple(preprocess.std),
                      preprocess.interpolation)
    refused = f"{FORMAT_NAMES[fmt]} export refused, nothing written: the metadata read back from the file"
    if tuple(meta["labels"]) != tuple(labels):
        wrong = next((i for i, (a, b) in enumerate(zip(meta["labels"], labels)) if a != b), min(len(meta["labels"]),
                                                                                                len(labels)))
        raise UsageError(f"{refused} gives other labels than the model's ({len(meta['labels'])} against "
                         f"{len(labels)}; the first difference at class {wrong})")
    if got != want:
        fields = [f for f in ("resize", "crop", "mean", "std", "interpolation") if getattr(got, f) != getattr(want, f)]
        raise UsageError(f"{refused} gives other preprocessing than the model's ({', '.join(fields)}: "
                         f"{', '.join(f'{getattr(got, f)} against {getattr(want, f)}' for f in fields)})")
    return got


def export(module, weights: Resolved, labels: tuple[str, ...], fmt: str, output: str, batch_u8: torch.Tensor,
           names: list[str], opset: int | None = None) -> dict:
    """Export `module` (model.ResNet, eval, float32; `weights` says which and its preprocessing, `labels` its
    class names) as `fmt` ("onnx" or "openvino") to `output`, after the parity check on `batch_u8` ((N, crop,
    crop, 3) uint8 images named `names`, N >= 1). Returns the report: {"model", "files": {path: bytes},
    "format", "arch", "weights", "opset", "seconds": {"export", "check"}, "parity": {...}}. Raises UsageError
    when the exporter fails or the check refuses the file: then nothing is left at `output` (a file already
    there is kept as it was)."""
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset must be from {MIN_OPSET} to {MAX_OPSET} (got {opset})")
    opset = opset or DEFAULT_OPSET
    need(fmt)
    meta = metadata(weights, labels, fmt, opset)
    targets = export_targets(output, fmt)
    with staged(output, targets, ".export-") as (atomics, work):
        start = time.perf_counter()
        onnx_path = os.path.join(work, "model.onnx")
        to_onnx(module, weights.preprocess.crop, onnx_path, meta, opset)
        if fmt == "openvino":
            produced = [os.path.join(work, "model.bin"), os.path.join(work, "model.xml")]
            to_openvino(onnx_path, produced[1], meta)
        else:
            produced = [onnx_path]
        exported = time.perf_counter() - start
        model = replace(read_blobs(produced[-1], fmt, len(labels)), source=output)
        start = time.perf_counter()
        written = read_back(produced[-1], fmt, labels, weights.preprocess)
        parity = check_parity(module, model, batch_u8, weights.preprocess, names, written)
        checked = time.perf_counter() - start
        if not parity.ok:
            raise UsageError(f"{FORMAT_NAMES[fmt]} export refused, nothing written: the parity check failed: "
                             f"{parity.failure} (max probability difference {parity.max_prob_diff:.2e}, "
                             f"tolerance {PROB_TOLERANCE:g})")
        commit_files(atomics, produced)
    return {"model": output, "files": {p: os.path.getsize(p) for p in targets}, "format": fmt,
            "arch": weights.arch.name, "weights": weights.name, "opset": opset,
            "seconds": {"export": round(exported, 3), "check": round(checked, 3)},
            "parity": {"images": parity.images, "batches": list(parity.batches), "top5_identical": True,
                       "max_prob_diff": parity.max_prob_diff, "max_logit_diff": parity.max_logit_diff,
                       "max_feature_diff": parity.max_feature_diff, "tolerance": parity.tolerance}}


def export_targets(output: str, fmt: str) -> list[str]:
    """The files an export writes: the .onnx, or an IR's .bin and .xml (in the order they are committed)."""
    return [output] if fmt == "onnx" else [bin_path(output), output]


@contextlib.contextmanager
def staged(output: str, targets: list[str], prefix: str):
    """(atomic files for `targets`, a work folder beside `output`) for one export: the files are made in the
    work folder, checked, then moved into place by `commit_files`; on any error the atomic files are aborted
    (nothing is left at `output`, a file already there is kept) and the work folder goes in every case."""
    atomics: list = []
    work = tempfile.mkdtemp(prefix=prefix, dir=os.path.dirname(os.path.abspath(output)))
    try:
        open_targets(output, targets, atomics)
        yield atomics, work
    except BaseException:
        for atomic in atomics:
            atomic.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def open_targets(output: str, targets: list[str], atomics: list) -> None:
    """Append a core.files.AtomicFile for each of `targets` (the model, and an IR's .bin) to `atomics`. A name
    the user gave (`output`) is followed if it is a link; the .bin beside it is a name the tool chose. Raises
    UsageError naming the file that cannot be written."""
    from ..core.files import AtomicFile

    for path in targets:
        try:
            atomics.append(AtomicFile(path, follow=path == output))
        except OSError as exc:
            raise UsageError(f"-o {output}: {path}: {exc.strerror or exc}") from None


def commit_files(atomics: list, produced: list[str]) -> None:
    """Move each checked file of `produced` into its core.files.AtomicFile (same order) and commit it."""
    for atomic, path in zip(atomics, produced):
        atomic.file.close()
        os.replace(path, atomic.tmp)
        atomic.file = open(atomic.tmp, "ab")  # noqa: SIM115 - for commit's fsync; commit closes it
        atomic.commit()
