"""OpenVINO's own int8 path, as its documentation writes it: the ONNX model converted by openvino.convert_model,
quantized by NNCF (nncf.quantize, post-training, default preset) on calibration photos preprocessed with
torchvision's `weights.transforms()`, saved as an IR that `runtime_loop.py openvino` then runs.

    python benchmarks/nncf_loop_model.py MODEL.onnx CALIBRATION_FOLDER OUT.xml [--limit 300]
"""

import argparse
from pathlib import Path

import nncf
import openvino as ov
from PIL import Image
from torchvision import models

ap = argparse.ArgumentParser()
ap.add_argument("onnx")
ap.add_argument("calibration")
ap.add_argument("out")
ap.add_argument("--limit", type=int, default=300)
args = ap.parse_args()
transforms = models.ResNet50_Weights.DEFAULT.transforms()
paths = sorted(p for p in Path(args.calibration).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
samples = [transforms(Image.open(p).convert("RGB")).unsqueeze(0).numpy() for p in paths[:args.limit]]
model = nncf.quantize(ov.convert_model(args.onnx), nncf.Dataset(samples), subset_size=len(samples))
ov.save_model(model, args.out)
