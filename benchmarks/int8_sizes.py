"""int8 export time and file sizes: `resnet-classify export --int8` (OpenVINO + NNCF, and ONNX Runtime QDQ), whole
process as a user times it (loading, the fp32 graph, calibration, quantization, the agreement check, writing),
for seeded checkpoints in torchvision's layout, calibrated and checked on the sample photos (a speed and size
measurement: a seeded head's agreement says little, so --min-agreement 0).

    python benchmarks/int8_sizes.py                        # resnet18, resnet50, resnet152; openvino and onnx
    python benchmarks/int8_sizes.py --archs resnet18 --formats openvino --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests"), str(HERE), str(ROOT)]
CLI = str(Path(sys.executable).parent / "resnet-classify")


def export_int8(ckpt: Path, out: Path) -> dict:
    samples = str(ROOT / "sample_images")
    t0 = time.perf_counter()
    res = subprocess.run([CLI, "export", "-w", str(ckpt), "-o", str(out), "--int8", "--calibrate", samples,
                          "--check", samples, "--min-agreement", "0", "-q"], capture_output=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{out.name}: {res.stderr.decode(errors='replace')[-2000:]}")
    return {**json.loads(res.stdout), "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50,resnet152")
    ap.add_argument("--formats", default="openvino,onnx")
    ap.add_argument("--work", default=str(ROOT / "bench-out" / "int8"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from bench import machine
    from checkpoints import make_checkpoint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in args.archs.split(","):
        ckpt = work / f"{arch}-seeded.pth"
        if not ckpt.exists():
            make_checkpoint(arch, ckpt)
        for fmt in args.formats.split(","):
            r = export_int8(ckpt, work / f"{arch}-int8{'.xml' if fmt == 'openvino' else '.onnx'}")
            rows.append({"arch": arch, "format": fmt, "wall_s": r["wall_s"], "quantize_s": r["seconds"]["quantize"],
                         "check_s": r["seconds"]["check"], "mb": round(sum(r["files"].values()) / 1e6, 1),
                         "checkpoint_mb": round(ckpt.stat().st_size / 1e6, 1)})
            print(json.dumps(rows[-1]), flush=True)
    results = {"machine": machine(), "rows": rows}
    print(f"machine: {results['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
