"""Peak memory and time of `resnet-classify similar --duplicates` on synthetic embedding files.

    .venv/bin/python benchmarks/similar_bench.py --n 2000 4000 8000 --kind identical
    .venv/bin/python benchmarks/similar_bench.py --n 100000 --kind clustered
    .venv/bin/python benchmarks/similar_bench.py --n 8000 --package /path/to/another/checkout   # compare

Each size is written as an `.npy` index with its `FILE.paths.jsonl` (as `embed` writes them) by a child
process, then the command runs in a fresh process (`python -m resnet_cli`, stdout to /dev/null) whose peak
resident memory (ru_maxrss, from wait4) and wall time are printed. (Linux counts into a child's ru_maxrss
the memory of the process it was forked from, so this one never holds the vectors itself.) Vectors are non-negative, as ResNet's pooled features are:

- identical: one direction plus noise 1e-3: every pair is above the threshold, one group of N (the worst case
  for the links; the answer itself is N paths);
- clustered: |normal| vectors (unrelated ones are about 0.64 similar), a tenth of them in groups of 2 to 5
  near-copies (noise 0.02): what a photo collection with some duplicates looks like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def vectors(n: int, dim: int, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "identical":
        base = np.abs(rng.normal(size=dim)).astype(np.float32)
        return np.abs(base + rng.normal(scale=1e-3, size=(n, dim)).astype(np.float32))
    out = np.abs(rng.normal(size=(n, dim))).astype(np.float32)
    copies = n // 10
    at = 0
    while at < copies:
        size = int(rng.integers(2, 6))
        rows = rng.choice(n, size, replace=False)
        out[rows] = np.abs(out[rows[0]] + rng.normal(scale=0.02, size=(size, dim)).astype(np.float32))
        at += size
    return out


def write_index(folder: Path, n: int, dim: int, kind: str) -> Path:
    path = folder / f"{kind}-{n}.npy"
    np.save(path, vectors(n, dim, kind))
    with open(folder / f"{kind}-{n}.paths.jsonl", "w") as f:
        f.writelines(json.dumps({"row": i, "path": f"photos/{i:06d}.jpg"}) + "\n" for i in range(n))
    return path


def measure(index: Path, package: Path, threshold: float) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one `similar --duplicates` run."""
    env = {**os.environ, "PYTHONPATH": str(package)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "resnet_cli", "similar", "--index", str(index), "--duplicates",
                             "--threshold", str(threshold), "-f", "jsonl"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=package)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"similar failed ({os.waitstatus_to_exitcode(status)}): {err}")
    return usage.ru_maxrss / 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 4000, 8000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kind", choices=["identical", "clustered"], default="identical")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--package", type=Path, default=ROOT, help="the checkout whose resnet_cli runs")
    ap.add_argument("--write", metavar="FOLDER", help=argparse.SUPPRESS)  # the child that writes an index
    args = ap.parse_args()
    if args.write:
        write_index(Path(args.write), args.n[0], args.dim, args.kind)
        return
    print(f"{'vectors':>8} {'dim':>5} {'kind':>10} {'index MB':>9} {'peak RSS MB':>12} {'time s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            subprocess.run([sys.executable, __file__, "--write", tmp, "--n", str(n), "--dim", str(args.dim),
                            "--kind", args.kind], check=True)
            index = Path(tmp) / f"{args.kind}-{n}.npy"
            rss, wall = measure(index, args.package, args.threshold)
            print(f"{n:>8} {args.dim:>5} {args.kind:>10} {n * args.dim * 4 / 1e6:>9.1f} {rss:>12.0f} {wall:>8.1f}",
                  flush=True)
            index.unlink()


if __name__ == "__main__":
    main()
