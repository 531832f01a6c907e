"""ONNX Runtime and OpenVINO baselines, as a user would write them: PIL + `weights.transforms()` per image,
batches of 32 through the runtime (its own default threading), softmax, top-5. Whole process, like the others.

    python benchmarks/runtime_loop.py onnxruntime|openvino MODEL.onnx FOLDER
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import models

BATCH = 32
runtime, onnx_path, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
weights = models.ResNet50_Weights.DEFAULT
categories = weights.meta["categories"]
transforms = weights.transforms()

if runtime == "onnxruntime":
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def infer(batch):
        return session.run(None, {name: batch})[0]
else:
    import openvino as ov

    compiled = ov.Core().compile_model(onnx_path, "CPU")  # default config: bf16 where the CPU has it

    def infer(batch):
        return compiled(batch)[0]


def flush(paths, tensors):
    logits = infer(np.stack(tensors))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    for p, row in zip(paths, probs):
        top = np.argsort(-row)[:5]
        print(p.name, categories[top[0]], f"{row[top[0]]:.4f}")


paths, tensors = [], []
for path in sorted(folder.iterdir()):
    paths.append(path)
    tensors.append(transforms(Image.open(path).convert("RGB")).numpy())
    if len(paths) == BATCH:
        flush(paths, tensors)
        paths, tensors = [], []
if paths:
    flush(paths, tensors)
