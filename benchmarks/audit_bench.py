"""Time and memory of `resnet-classify audit`.

    .venv/bin/python benchmarks/audit_bench.py speed --rounds 3            # the 512-JPEG set, 5 folds
    .venv/bin/python benchmarks/audit_bench.py memory --n 10000 30000 100000

speed: the 512 JPEGs of benchmarks/images.py (`imagenet`, 500x375), filed into 6 class folders by their source
photo, audited with resnet18 (the seeded stand-in weights of the tests: the time does not depend on the
weights' values) and 5 folds on the CPU. Each round, in one fresh process: the feature extraction into an empty
cache (train's extract: decoding and the network's forward pass), the same call again (every vector read back
from the cache) and the analysis (analysis.audit.audit); then the command itself twice in fresh processes
(`python -m resnet_cli audit ...`, stdout to /dev/null), with an empty cache and with it filled. Medians.

memory: N synthetic 512-long non-negative feature vectors (10 classes of clustered vectors, a tenth of them
near-copies across classes) through analysis.audit.audit in a fresh process each (the cross-fitting heads
capped at --max-iter iterations: memory does not depend on it); peak resident memory (ru_maxrss from wait4)
and time, and the peak before the audit starts (the interpreter, numpy, torch and the vectors). What the audit adds:
one float64 copy of the vectors (the cross-fitting, shared by its folds), then one float32 unit copy (the
neighbour searches) and a bounded tile; never an N x N matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], env: dict) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_maxrss * 1024


PHASES = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from resnet_cli.analysis import audit, labelled
from resnet_cli.cli.commands.train import extract
from resnet_cli.run.job import ModelOptions, RunOptions
data, ckpt, folds = sys.argv[2], sys.argv[3], int(sys.argv[4])
options = RunOptions(device="cpu", quiet=True)
resolved = ModelOptions("resnet18", ckpt).resolve()
ds = labelled.read(data)
times = {}
for phase in ("extraction", "cache"):  # the second pass reads every vector back from the cache
    start = time.perf_counter()
    features, failures, counts, code = extract(ds.sources, resolved, options)
    times[phase] = time.perf_counter() - start
classes = sorted(set(ds.labels))
paths = [s.path for s in ds.sources]
x = np.stack([features[p] for p in paths])
y = np.array([classes.index(l) for l in ds.labels])
start = time.perf_counter()
found, summary = audit.audit(paths, y, classes, x, folds=folds)
times["analysis"] = time.perf_counter() - start
print(json.dumps(times))
"""


def speed(rounds: int, folds: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import make_checkpoint
    from images import PHOTOS, make_set

    work = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    try:
        images = make_set("imagenet", work / "images")
        data = work / "data"
        for path in sorted(images.glob("*.jpg")):
            label = PHOTOS[int(path.stem.split("_")[-1]) % len(PHOTOS)].stem
            (data / label).mkdir(parents=True, exist_ok=True)
            os.link(path, data / label / path.name)
        ckpt = make_checkpoint("resnet18", work / "resnet18.pth")
        cli = [sys.executable, "-m", "resnet_cli", "audit", str(data), "--arch", "resnet18", "--weights",
               str(ckpt), "--folds", str(folds), "-f", "json", "-q", "--device", "cpu"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        rows = []
        for r in range(rounds):
            # in one process: extraction (an empty cache), the features read back, the analysis
            env["RESNET_CLASSIFY_CACHE"] = str(work / f"cache{r}")
            out = subprocess.run([sys.executable, "-c", PHASES, str(ROOT), str(data), str(ckpt), str(folds)],
                                 env=env, capture_output=True, text=True, check=True).stdout
            phases = json.loads(out.strip().splitlines()[-1])
            # the command as a user runs it: an empty cache, then the same cache again
            env["RESNET_CLASSIFY_CACHE"] = str(work / f"cli{r}")
            cold, warm = _run(cli, env)[0], _run(cli, env)[0]
            rows.append({**phases, "cold": cold, "warm": warm})
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rows[-1].items()), flush=True)
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        audit_time = med["cache"] + med["analysis"]
        print(f"512 JPEGs, {folds} folds, {os.cpu_count()} CPUs, medians of {rounds}: feature extraction "
              f"{med['extraction']:.1f} s; the audit on cached features {audit_time:.2f} s (reading the cache "
              f"{med['cache']:.2f} s, analysis {med['analysis']:.2f} s) = {100 * audit_time / med['extraction']:.1f} % "
              f"of the extraction. The command: {med['cold']:.1f} s with an empty cache, {med['warm']:.1f} s with it "
              "filled (start-up and model loading included).")
    finally:
        shutil.rmtree(work, ignore_errors=True)


CHILD = r"""
import resource, sys, time, numpy as np
sys.path.insert(0, sys.argv[4])
from resnet_cli.analysis import audit
import torch  # imported by the audit's first fit anyway: counted in the baseline, not in the audit
n, dim, max_iter = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
centres = np.abs(rng.normal(size=(10, dim)))
y = rng.integers(0, 10, n)
x = np.empty((n, dim), np.float32)
for s in range(0, n, 4096):  # a block at a time: the data's making must not set the peak
    x[s:s + 4096] = np.abs(centres[y[s:s + 4096]] + rng.normal(size=(len(y[s:s + 4096]), dim)))
copies = rng.choice(n, n // 10, replace=False)
sources = rng.choice(n, len(copies))
for s in range(0, len(copies), 4096):
    c = copies[s:s + 4096]
    x[c] = x[sources[s:s + 4096]] + rng.normal(scale=0.01, size=(len(c), dim)).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
found, summary = audit.audit([f"{i:06d}.jpg" for i in range(n)], y, [str(c) for c in range(10)], x, folds=5,
                             max_iter=max_iter)
print(f"{time.perf_counter() - start:.1f} {before} {summary['findings']}", file=sys.stderr)
"""


def memory(sizes: list[int], dim: int, max_iter: int, tree: str = str(ROOT)) -> None:
    for n in sizes:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(n), str(dim), str(max_iter), tree],
                                stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        out = proc.stderr.read().decode().strip()
        if os.waitstatus_to_exitcode(status):
            sys.exit(out)
        seconds, before, findings = out.splitlines()[-1].split(" ", 2)
        vectors = n * dim * 4
        print(f"N={n:>7}: peak RSS {usage.ru_maxrss / 1024:7.0f} MB, before the audit {int(before) / 2**20:5.0f} MB "
              f"(the vectors: {vectors / 2**20:4.0f} MB), audit {float(seconds):6.1f} s, whole "
              f"{time.perf_counter() - start:6.1f} s; {findings}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--folds", type=int, default=5)
    m = sub.add_parser("memory")
    m.add_argument("--n", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    m.add_argument("--dim", type=int, default=512)
    m.add_argument("--max-iter", type=int, default=20)
    m.add_argument("--tree", default=str(ROOT), help="the source tree whose resnet_cli is measured")
    a = parser.parse_args()
    if a.mode == "speed":
        speed(a.rounds, a.folds)
    else:
        memory(a.n, a.dim, a.max_iter, a.tree)


if __name__ == "__main__":
    main()
