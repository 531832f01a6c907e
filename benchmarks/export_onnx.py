"""Export a torchvision resnet50 checkpoint to ONNX (dynamic batch) for the runtime baselines.

    python benchmarks/export_onnx.py CHECKPOINT OUT.onnx
"""

import sys

import torch
from torchvision import models

model = models.resnet50()
model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
model.eval()
x = torch.randn(2, 3, 224, 224)
batch = torch.export.Dim("batch", min=1, max=1024)
program = torch.onnx.export(model, (x,), input_names=["input"], output_names=["logits"],
                            dynamic_shapes={"x": {0: batch}}, dynamo=True)
program.save(sys.argv[2])
