"""Exported models (formats.py) run by their runtimes, behind inference.Predictor's interface.

`ExportedPredictor` is a Predictor whose forward pass is an ONNX Runtime session or an OpenVINO compiled model
instead of the torch network: the same fixed-shape chunks (`forward_batch("cpu")` images, the last padded with
blank images), the same normalisation in torch before the graph (preprocess.normalize with the metadata's mean
and std: the graph is the network alone, as torchvision's), the same softmax/sigmoid, top-k, `--restrict` and
`--tta` arithmetic (Predictor.classify), so a record differs from the torch path's only by what the runtime
computes differently (the export's parity check bounds that).

Settings, both on the CPU:
- ONNX Runtime: CPUExecutionProvider, its default graph optimisations, intra-op threads = torch's thread count.
- OpenVINO: the CPU plugin with INFERENCE_PRECISION_HINT f32 (its default on CPUs with AVX-512 BF16 or AMX is
  bf16, which moved a resnet18's probabilities by 1e-2) and INFERENCE_NUM_THREADS = torch's thread count.
  An int8 model keeps its int8 layers either way: the hint governs the float ones.

`make_predictor` is the one factory the engines (local, Ray) and the API use, for torch networks and exported
files alike. `open_forward` is also what `export` checks a new file with, so the check runs exactly what
`classify` runs.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import UsageError
from .devices import forward_batch
from .formats import FEATURES, INPUT, LOGITS, RUNTIME_NAMES, ExportedModel, need, reason
from .inference import Predictor
from .registry import Preprocess


class _Forward:
    """A runtime's forward pass on (N, 3, crop, crop) float32 torch tensors: `__call__` gives the logits,
    `features` the pooled vectors, both float32 CPU tensors. `classes` and `feature_dim` are the outputs'
    widths (`feature_dim` None when the file has no "features" output); `input_shape` the input's (None for a
    dynamic axis)."""

    classes: int
    feature_dim: int | None
    input_shape: tuple

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x, LOGITS))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x, FEATURES))

    def run(self, x: torch.Tensor, output: str) -> np.ndarray:
        raise NotImplementedError


class OnnxForward(_Forward):
    """An ONNX Runtime InferenceSession on the model's bytes (CPUExecutionProvider)."""

    def __init__(self, data: bytes, source: str, threads: int | None = None) -> None:
        ort = need("onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types (Fail, InvalidGraph, ...)
            raise UsageError(f"model {source}: ONNX Runtime cannot load it ({reason(exc)})") from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        _check_graph(source, inputs, outputs)
        self.input_shape = tuple(inputs[INPUT])
        self.classes = outputs[LOGITS][1]
        self.feature_dim = outputs[FEATURES][1] if FEATURES in outputs else None

    def run(self, x: torch.Tensor, output: str) -> np.ndarray:
        return self.session.run([output], {INPUT: np.ascontiguousarray(x.float().numpy())})[0]


class OpenVinoForward(_Forward):
    """An OpenVINO model compiled for its CPU plugin, fp32 (module docstring)."""

    def __init__(self, xml: bytes, weights: bytes, source: str, threads: int | None = None) -> None:
        ov = need("openvino")
        core = ov.Core()
        try:
            model = core.read_model(model=xml.decode("utf-8"),
                                    weights=ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
            self.compiled = core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()})
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError and types of its own
            raise UsageError(f"model {source}: OpenVINO cannot load it ({reason(exc)})") from None

        def shape(port) -> list:
            return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

        inputs = {n: shape(p) for p in self.compiled.inputs for n in p.get_names()}
        outputs = {n: shape(p) for p in self.compiled.outputs for n in p.get_names()}
        _check_graph(source, inputs, outputs)
        self.input_shape = tuple(inputs[INPUT])
        self.classes = outputs[LOGITS][1]
        self.feature_dim = outputs[FEATURES][1] if FEATURES in outputs else None
        self.request = self.compiled.create_infer_request()

    def run(self, x: torch.Tensor, output: str) -> np.ndarray:
        result = self.request.infer({INPUT: np.ascontiguousarray(x.float().numpy())})
        return np.array(result[self.compiled.output(output)], dtype=np.float32, copy=True)


def _check_graph(source: str, inputs: dict, outputs: dict) -> None:
    """A usage error unless the graph has the input and outputs an export writes (formats.py)."""
    shape = inputs.get(INPUT)
    if len(inputs) != 1 or shape is None or len(shape) != 4:
        raise UsageError(f"model {source}: its graph needs one input {INPUT!r} of shape (N, 3, crop, crop); it has "
                         f"{', '.join(f'{k} {v}' for k, v in inputs.items()) or 'none'}")
    logits = outputs.get(LOGITS)
    if logits is None or len(logits) != 2 or not isinstance(logits[1], int):
        raise UsageError(f"model {source}: its graph has no output {LOGITS!r} of shape (N, classes)")
    features = outputs.get(FEATURES)
    if features is not None and (len(features) != 2 or not isinstance(features[1], int)):
        raise UsageError(f"model {source}: its output {FEATURES!r} is not of shape (N, D)")


def open_forward(model: ExportedModel, threads: int | None = None) -> _Forward:
    """The runtime's forward pass for an exported model's bytes. Raises UsageError when the runtime is not
    installed or refuses the file."""
    if model.kind == "onnx":
        return OnnxForward(model.blobs[0], model.source, threads)
    if model.kind == "openvino":
        return OpenVinoForward(model.blobs[0], model.blobs[1], model.source, threads)
    raise UsageError(f"model {model.source}: no runtime for {model.kind!r} files")


class ExportedPredictor(Predictor):
    """inference.Predictor on an exported model: `classify(batch_u8, topk, restrict, tta)` -> ((N, topk)
    float32 probabilities, (N, topk) int64 indices) and `embed(batch_u8)` -> (N, D) float32, computed as the
    torch path computes them from the runtime's logits and features (module docstring). CPU, float32 inputs.
    `explain` needs the torch network's gradients: a usage error."""

    def __init__(self, model: ExportedModel, preprocess: Preprocess, *, num_classes: int) -> None:
        self.preprocess = preprocess
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.chunk = forward_batch("cpu")
        self.module = None
        self.runtime = model.kind
        self.forward = open_forward(model)
        crop = self.forward.input_shape[2:]
        if any(c is not None and c != preprocess.crop for c in crop):
            raise UsageError(f"model {model.source}: its graph takes {crop[0]}x{crop[1]} images; its metadata says "
                             f"{preprocess.crop}")
        self.binary = self.forward.classes == 1
        if self.forward.classes != (1 if num_classes == 2 and self.binary else num_classes):
            raise UsageError(f"model {model.source}: its graph gives {self.forward.classes} logits; its metadata "
                             f"names {num_classes} classes")
        self.feature_dim = self.forward.feature_dim

    def embed(self, batch_u8: torch.Tensor) -> torch.Tensor:
        if self.feature_dim is None:
            raise UsageError(f"this {RUNTIME_NAMES[self.runtime]} model has no {FEATURES!r} output; "
                             "embed needs one (resnet-classify export writes it)")
        return super().embed(batch_u8)

    def explain(self, *args, **kwargs):
        raise UsageError(f"explain needs the torch network (its gradients); a {RUNTIME_NAMES[self.runtime]} "
                         "model cannot explain: give the checkpoint it was exported from")


def make_predictor(module, preprocess: Preprocess, *, device: torch.device, dtype: torch.dtype) -> Predictor:
    """The predictor for a loaded model (weights.LoadedModel.module): inference.Predictor for a torch network,
    ExportedPredictor for an exported file's formats.ExportedModel (then `device`/`dtype` are the CPU and
    float32: inference.check_exported has refused others). Both answer `classify` and `embed` alike, on the
    same fixed-shape chunks. The one place the engines and the API build a predictor."""
    if isinstance(module, ExportedModel):
        return ExportedPredictor(module, preprocess, num_classes=module.num_classes)
    return Predictor(module, preprocess, device=device, dtype=dtype)

