"""Which int8 runtime: torch's x86 FX post-training quantization, ONNX Runtime's QDQ int8 and OpenVINO with NNCF,
on a resnet18 whose head `train` fitted to augmented copies of the sample photos (real margins), calibrated on
one set of augmented photos and checked on another (held out).

For each: quantization time, throughput (images/s, batch 32, 224 crop, the network alone on preprocessed
tensors, interleaved rounds, medians), top-1 agreement with fp32 and mean top-5 overlap on the held-out photos.

    python benchmarks/int8_runtimes.py [--rounds 3] [--threads 2] [--arch resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from checkpoints import PHOTOS, augment, make_checkpoint

from resnet_cli.models import preprocess as pp
from resnet_cli.models.resolve import resolve
from resnet_cli.models.weights import load

BATCH = 32


def make_sets(root: Path, per_class: int, seed: int) -> dict[str, Path]:
    """train/ (for `train`), calib/ and check/: augmented copies of each sample photo, one class a photo."""
    rng = random.Random(seed)
    out = {}
    for split in ("train", "calib", "check"):
        for photo in PHOTOS:
            folder = root / split / photo.stem
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.open(photo).convert("RGB")
            for i in range(per_class):
                augment(img, rng).save(folder / f"{i}.jpg", quality=90)
        out[split] = root / split
    return out


def tensors(folder: Path, pre) -> torch.Tensor:
    """(N, 3, crop, crop) float32, preprocessed as classify does."""
    crops = [np.asarray(pp.resize_and_crop(Image.open(p).convert("RGB"), pre))
             for p in sorted(folder.rglob("*.jpg"))]
    return pp.normalize(torch.from_numpy(np.stack(crops)), pre).contiguous()


def agreement(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    top1 = float((ref.argmax(1) == got.argmax(1)).float().mean())
    k = min(5, ref.shape[1])
    a, b = ref.topk(k, 1).indices.tolist(), got.topk(k, 1).indices.tolist()
    overlap = statistics.mean(len(set(x) & set(y)) / k for x, y in zip(a, b))
    return top1, overlap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--head", choices=["trained", "seeded"], default="trained")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    sets = make_sets(work, args.per_class, seed=7)
    base = make_checkpoint(args.arch, work / f"{args.arch}.pth")
    if args.head == "trained":
        model_path = work / "model.safetensors"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "resnet_cli", "train", str(sets["train"]), "-a", args.arch, "-w",
                        str(base), "-o", str(model_path), "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    else:
        model_path = base
    resolved = resolve(args.arch if args.head == "seeded" else None, str(model_path))
    module = load(resolved).module.eval()
    pre = resolved.preprocess
    calib, check = tensors(sets["calib"], pre), tensors(sets["check"], pre)
    with torch.inference_mode():
        ref = module(check)
    bench_x = torch.cat([check] * (BATCH // len(check) + 1))[:BATCH].contiguous()
    runners, info = {}, {}

    def fp32(x):
        with torch.inference_mode():
            return module(x)
    runners["torch fp32 (eager)"] = fp32

    # torch FX, x86 backend: per-channel weights (get_default_qconfig_mapping("x86"))
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    t = time.perf_counter()
    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(module), get_default_qconfig_mapping("x86"), (calib[:1],))
    with torch.inference_mode():
        for part in calib.split(BATCH):
            prepared(part)
    fx = convert_fx(prepared)
    info["torch FX x86"] = {"quantize_s": time.perf_counter() - t}

    def fx_run(x):
        with torch.inference_mode():
            return fx(x)
    runners["torch FX x86"] = fx_run

    # ONNX: the fp32 export, then ONNX Runtime's quantize_static, QDQ, per-channel
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from resnet_cli.models.export import to_onnx
    fp32_onnx = work / "fp32.onnx"
    to_onnx(module, pre.crop, str(fp32_onnx), {})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.parts = iter([{"input": p.numpy()} for p in calib.split(BATCH)])

        def get_next(self):
            return next(self.parts, None)
    t = time.perf_counter()
    int8_onnx = work / "int8.onnx"
    quantize_static(str(fp32_onnx), str(int8_onnx), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    info["ONNX Runtime QDQ"] = {"quantize_s": time.perf_counter() - t, "bytes": int8_onnx.stat().st_size}
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    sessions = {name: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                for name, p in (("ONNX Runtime fp32", fp32_onnx), ("ONNX Runtime QDQ", int8_onnx))}
    info["ONNX Runtime fp32"] = {"bytes": fp32_onnx.stat().st_size}
    for name, s in sessions.items():
        runners[name] = lambda x, s=s: torch.from_numpy(s.run(["logits"], {"input": x.numpy()})[0])

    # OpenVINO + NNCF on the converted model
    import nncf
    import openvino as ov
    core = ov.Core()
    ov_fp32 = ov.convert_model(str(fp32_onnx))
    t = time.perf_counter()
    ov_int8 = nncf.quantize(ov_fp32, nncf.Dataset(list(calib.split(1)), lambda x: x.numpy()),
                            subset_size=len(calib))
    info["OpenVINO NNCF"] = {"quantize_s": time.perf_counter() - t}
    ov.save_model(ov_int8, str(work / "int8.xml"))
    info["OpenVINO NNCF"]["bytes"] = (work / "int8.xml").stat().st_size + (work / "int8.bin").stat().st_size
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}
    for name, m in (("OpenVINO fp32", ov_fp32), ("OpenVINO NNCF", ov_int8)):
        compiled = core.compile_model(m, "CPU", cfg)
        runners[name] = lambda x, c=compiled: torch.from_numpy(np.array(c(x.numpy())[c.output("logits")]))

    times: dict[str, list[float]] = {n: [] for n in runners}
    for name, run in runners.items():  # warm-up
        run(bench_x)
    for _ in range(args.rounds):
        for name, run in runners.items():
            t = time.perf_counter()
            run(bench_x)
            times[name].append(time.perf_counter() - t)
    rows = []
    for name, run in runners.items():
        got = torch.cat([run(part) for part in check.split(BATCH)])
        top1, top5 = agreement(ref, got)
        rows.append({"runtime": name, "img_s": round(BATCH / statistics.median(times[name]), 1),
                     "top1_agreement": round(top1, 4), "top5_overlap": round(top5, 4),
                     **{k: round(v, 2) if isinstance(v, float) else v for k, v in info.get(name, {}).items()}})
    print(json.dumps({"arch": args.arch, "head": args.head, "threads": args.threads, "held_out": len(check),
                      "calibration": len(calib), "rounds": args.rounds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
