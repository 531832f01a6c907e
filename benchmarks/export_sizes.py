"""Export time and file sizes: `resnet-classify export` to ONNX and to OpenVINO (fp32), whole process as a user
times it (start to exit: loading, exporting, the parity check on the sample photos, writing), for seeded
checkpoints in torchvision's layout, with the parity check's largest differences.

    python benchmarks/export_sizes.py                          # resnet18, resnet50, resnet152
    python benchmarks/export_sizes.py --archs all --runs 1     # every architecture of the registry
    python benchmarks/export_sizes.py --formats onnx --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

PY = sys.executable
CLI = str(Path(PY).parent / "resnet-classify")
EXTENSION = {"onnx": ".onnx", "openvino": ".xml"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50,resnet152", help="comma-separated, or all")
    ap.add_argument("--formats", default="onnx,openvino")
    ap.add_argument("--runs", type=int, default=1, help="exports of each (interleaved); the median is reported")
    ap.add_argument("--work", default=str(ROOT / "bench-out" / "export"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    from bench import machine
    from checkpoints import make_checkpoint

    from resnet_cli.models.registry import architectures

    archs = list(architectures()) if args.archs == "all" else args.archs.split(",")
    formats = args.formats.split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpts = {}
    for arch in archs:
        ckpts[arch] = work / f"{arch}-seeded.pth"
        if not ckpts[arch].exists():
            make_checkpoint(arch, ckpts[arch])
    times: dict[tuple, list[float]] = {}
    reports: dict[tuple, dict] = {}
    for r in range(args.runs):
        for arch in archs:
            for fmt in formats:
                out = work / f"{arch}{EXTENSION[fmt]}"
                t0 = time.perf_counter()
                res = subprocess.run([CLI, "export", "-w", str(ckpts[arch]), "-o", str(out), "-q"],
                                     capture_output=True, cwd=ROOT)
                wall = time.perf_counter() - t0
                if res.returncode != 0:
                    raise SystemExit(f"{arch} {fmt}: {res.stderr.decode(errors='replace')[-2000:]}")
                report = json.loads(res.stdout)
                times.setdefault((arch, fmt), []).append(wall)
                reports[(arch, fmt)] = report
                print(f"  [run {r + 1}/{args.runs}] {arch:18s} {fmt:9s} {wall:6.1f} s", file=sys.stderr, flush=True)
    rows = []
    for (arch, fmt), walls in times.items():
        report = reports[(arch, fmt)]
        p = report["parity"]
        rows.append({"arch": arch, "format": fmt, "median_s": round(statistics.median(walls), 1),
                     "runs_s": [round(w, 1) for w in walls], "export_s": report["seconds"]["export"],
                     "check_s": report["seconds"]["check"],
                     "mb": round(sum(report["files"].values()) / 1e6, 1),
                     "checkpoint_mb": round(ckpts[arch].stat().st_size / 1e6, 1),
                     "max_prob_diff": p["max_prob_diff"], "max_feature_diff": p["max_feature_diff"],
                     "top5_identical": p["top5_identical"]})
    results = {"machine": machine(), "rows": rows}
    print(f"machine: {results['machine']}")
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
