"""Exported model files: which runtime a `--weights` file needs, and the metadata it carries. No torch.

- `.onnx`: an ONNX model (ONNX Runtime runs it). Its metadata is the model's `metadata_props` entry
  "resnet_classify": JSON, the same object a model made by `train` carries (resolve.check_metadata) plus the
  export's own fields. All tensors inside the one file: a model whose tensors live in external files is refused
  (they could name any file on the machine).
- `.xml` (+ `.bin` of the same name beside it): an OpenVINO IR (OpenVINO runs it). The metadata is the IR's own
  rt_info entry "resnet_classify", the same JSON.

The graph an export writes: input "input", (N, 3, crop, crop) float32, normalised with the metadata's mean and
std (preprocess.normalize); outputs "logits", (N, classes) float32, and "features", (N, D) float32, the pooled
vector the head receives (what `embed` gives).

`kind_of` is the one place a file's kind is decided (by its name's extension); `raw_metadata` and `read_blobs`
dispatch on that kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.errors import UsageError, first_line

KINDS = {".onnx": "onnx", ".xml": "openvino"}  # extension -> runtime
RUNTIME_NAMES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
EXTRAS = {"onnx": "onnx", "openvino": "openvino"}  # the optional extra that installs each runtime
METADATA_KEY = "resnet_classify"
MAX_MODEL_BYTES = (2 << 30) - 1  # protobuf's own limit on one message: larger .onnx files are not single files
INPUT, LOGITS, FEATURES = "input", "logits", "features"
DEFAULT_MIN_AGREEMENT = 0.98  # export --int8: the least top-1 agreement with fp32 a written int8 model has (int8.py)


@dataclass(frozen=True, eq=False)
class ExportedModel:
    """An exported model's bytes, as the runtime opens it: ("onnx", (model,)) or ("openvino", (xml, bin)).
    What `weights.load` gives in place of a torch module, and what the Ray engine ships to its actors."""

    kind: str
    blobs: tuple[bytes, ...]
    source: str  # the file's path, for messages
    num_classes: int = 0  # the metadata's class count (its labels)


def kind_of(path: str) -> str | None:
    """The runtime a model file needs ("onnx", "openvino"), from its extension; None for a torch checkpoint."""
    return KINDS.get(os.path.splitext(path)[1].lower())


def bin_path(xml: str) -> str:
    """The weights file of an OpenVINO IR: the .xml's name with .bin (where OpenVINO looks for it)."""
    return os.path.splitext(xml)[0] + ".bin"


def need(kind: str):
    """The runtime's Python module (onnxruntime, openvino); a usage error naming the extra when missing."""
    try:
        if kind == "onnx":
            import onnxruntime
            return onnxruntime
        import openvino
        return openvino
    except ImportError:
        raise UsageError(f"running {RUNTIME_NAMES[kind]} models needs the {kind} extra: "
                         f"pip install 'resnet-classify[{EXTRAS[kind]}]'") from None


def reason(exc: BaseException) -> str:
    """A runtime's or exporter's error for one line of ours: its first line, control characters escaped (a
    hostile file's names may be quoted in it), at most 200 characters."""
    from ..core.console import printable

    return printable(first_line(exc))[:200]


def check_exported(weights, device: str, precision) -> None:
    """A usage error when `--device`/`--precision` ask an exported model (resolve.Resolved with a runtime other
    than torch) for what its runtime does not do here: it runs on the CPU (`--device auto` or `cpu`), in the
    precision it was exported in (`--precision fp32`, the default; an int8 file stays int8)."""
    if weights.runtime == "torch":
        return
    name = RUNTIME_NAMES[weights.runtime]
    if str(getattr(device, "value", device)) not in ("auto", "cpu"):
        raise UsageError(f"{weights.name} runs on {name} on the CPU; leave out --device or give --device cpu")
    if str(getattr(precision, "value", precision)) != "fp32":
        raise UsageError(f"{weights.name} runs in the precision it was exported in; --precision applies to "
                         "torch checkpoints only")


def _check_size(path: str, limit: int = MAX_MODEL_BYTES) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise UsageError(f"model {path}: {exc.strerror or exc}") from None
    if size > limit:
        raise UsageError(f"model {path}: {size:,} bytes, over the {limit:,} a single-file model may have")


def raw_metadata(path: str, kind: str, limit: int) -> str | None:
    """The "resnet_classify" metadata string of an exported model file (None when it has none). Raises
    UsageError naming the file for a file its format's reader refuses (truncated, not that format, external
    tensors, a .bin missing) or a metadata string over `limit` bytes."""
    _check_size(path)
    if kind == "onnx":
        need("onnx")
        import onnx
        from google.protobuf.message import DecodeError

        try:
            model = onnx.load(path, load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, OSError) as exc:
            raise UsageError(f"model {path}: not an ONNX model ({reason(exc)})") from None
        if not model.graph.node:
            raise UsageError(f"model {path}: not an ONNX model (no graph)")
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise UsageError(f"model {path}: its tensors are in external files; export a single-file model")
        values = [p.value for p in model.metadata_props if p.key == METADATA_KEY]
        raw = values[0] if values else None
    else:
        ov = need("openvino")
        if not os.path.isfile(bin_path(path)):
            raise UsageError(f"model {path}: its weights file {bin_path(path)} is missing")
        _check_size(bin_path(path))
        try:
            model = ov.Core().read_model(path)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError and types of its own
            raise UsageError(f"model {path}: not an OpenVINO IR ({reason(exc)})") from None
        raw = (model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None)
    if raw is not None and len(raw) > limit:
        raise UsageError(f"model {path}: its metadata {METADATA_KEY!r} is over {limit >> 20} MiB")
    return raw


def read_blobs(path: str, kind: str, num_classes: int) -> ExportedModel:
    """The file's bytes (and its .bin's for OpenVINO), to open with `runtimes`."""
    try:
        if kind == "onnx":
            with open(path, "rb") as f:
                return ExportedModel(kind, (f.read(),), path, num_classes)
        with open(path, "rb") as f, open(bin_path(path), "rb") as g:
            return ExportedModel(kind, (f.read(), g.read()), path, num_classes)
    except OSError as exc:
        raise UsageError(f"model {path}: {exc.strerror or exc}") from None

