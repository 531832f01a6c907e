"""How far `--precision bf16` moves the answers from fp32's, over several architectures and seeds.

    python benchmarks/bf16_agreement.py                       # resnet18, resnet50, resnext50_32x4d x seeds 0-2
    python benchmarks/bf16_agreement.py --arch resnet18 --seeds 0 1

Seeded stand-in checkpoints (tests/checkpoints.py: published weights cannot be downloaded here), the sample
photos, the command line as users run it (`-k 1000`, so every class's probability is compared). Per model:
images whose top-1 stays the same, the mean and smallest overlap of the top-5 sets, and the largest change of
any class's probability. Seeded weights put their top classes closer together than trained ones, so these
figures are pessimistic. Needs a CPU with AVX-512 BF16 or AMX (or a GPU); about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

ARCHS = ("resnet18", "resnet50", "resnext50_32x4d")


def probabilities(checkpoint: Path, arch: str, precision: str) -> dict[str, dict[int, float]]:
    """path -> {class index: probability} for every sample photo and every class."""
    res = subprocess.run([sys.executable, "-m", "resnet_cli", str(ROOT / "sample_images"), "-a", arch, "-w",
                          str(checkpoint), "-k", "1000", "-f", "jsonl", "-q", "--device", "cpu", "--precision",
                          precision], capture_output=True, check=True, cwd=ROOT)
    records = [json.loads(line) for line in res.stdout.splitlines()]
    return {r["path"]: {t["index"]: t["probability"] for t in r["topk"]} for r in records}


def top(probs: dict[int, float], k: int) -> list[int]:
    return sorted(probs, key=lambda i: (-probs[i], i))[:k]


def compare(exact: dict, approx: dict) -> dict:
    images = sorted(exact)
    same_top1 = sum(top(exact[p], 1) == top(approx[p], 1) for p in images)
    overlaps = [len(set(top(exact[p], 5)) & set(top(approx[p], 5))) for p in images]
    max_dp = max(abs(exact[p][i] - approx[p][i]) for p in images for i in exact[p])
    return {"images": len(images), "same_top1": same_top1, "top5_overlap_mean": sum(overlaps) / len(overlaps) / 5,
            "top5_overlap_min": min(overlaps), "max_abs_dp": max_dp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    from checkpoints import make_checkpoint

    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
               platform.processor())
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    print(f"# {cpu}, {torch.get_num_threads()} threads, AVX-512 BF16/AMX: {'yes' if bf16 else 'no'}, "
          f"torch {torch.__version__}, Python {platform.python_version()}")
    print("| arch | seed | images | same top-1 | top-5 overlap (mean, min) | largest probability change |")
    print("|---|---:|---:|---:|---:|---:|")
    total = {"images": 0, "same_top1": 0, "max_abs_dp": 0.0}
    with tempfile.TemporaryDirectory() as work:
        for arch in args.arch:
            for seed in args.seeds:
                ckpt = make_checkpoint(arch, Path(work) / f"{arch}-{seed}.pth", seed)
                row = compare(probabilities(ckpt, arch, "fp32"), probabilities(ckpt, arch, "bf16"))
                print(f"| {arch} | {seed} | {row['images']} | {row['same_top1']} | "
                      f"{row['top5_overlap_mean']:.0%}, {row['top5_overlap_min']}/5 | {row['max_abs_dp']:.3f} |",
                      flush=True)
                total["images"] += row["images"]
                total["same_top1"] += row["same_top1"]
                total["max_abs_dp"] = max(total["max_abs_dp"], row["max_abs_dp"])
    print(f"# all: {total['same_top1']} of {total['images']} images keep their top-1; largest probability change "
          f"{total['max_abs_dp']:.3f}")


if __name__ == "__main__":
    main()
