"""explain's own class activation maps (resnet_cli/models/cam.py) against the `grad-cam` package, the tests' oracle.

Measures the three things cam.py's module docstring claims for implementing the methods here rather than
depending on pytorch-grad-cam, on this machine:

1. import: seconds `import pytorch_grad_cam` adds to a process that has already imported torch, against
   `import resnet_cli.models.cam` (fresh process per run, the import timed inside it with perf_counter; the whole
   process's wall clock beside it), median of --runs runs after one discarded round, interleaved. Also the
   packages the import brings into sys.modules, and the size on disk of the distributions grad-cam installs
   that the project's own runtime does not need (sizes from each distribution's RECORD).
2. speed: resnet50 (seeded checkpoint), one batch of 16 photo crops (224x224), Grad-CAM at layer4's last
   block: `Predictor.explain` (which also returns classify's top-k, from the fused fast path) against
   pytorch_grad_cam.GradCAM on torchvision's resnet50 in eval mode with the same checkpoint and the same
   targets (constructed once; timing includes normalising the uint8 batch, as ours does), and plain classify
   (`Predictor.classify`) for reference. Interleaved rounds, median of --runs after --warmup rounds; torch's
   default thread count. The largest difference between the two sets of maps is printed as a check that both
   computed the same thing.
3. memory: --batches batches of 8 through each variant in its own subprocess: ours; GradCAM constructed once
   and called in a loop; `with GradCAM(...) as cam:` per batch. Peak RSS (getrusage ru_maxrss) and current RSS
   (/proc/self/statm) after model load and after 10, 50, 100, 200 batches, and the forward hooks left on the
   target block. resnet18 by default so the whole run stays near 8 minutes on a 2-core CPU; resnet50 with
   `--memory-arch resnet50` (about 15 minutes for that section alone there).

Seeded checkpoints (tests/checkpoints.py) are cached in /tmp/bench-explain. Run from the repository root:

    .venv/bin/python benchmarks/explain_oracle.py
    .venv/bin/python benchmarks/explain_oracle.py --only memory --memory-arch resnet50
    .venv/bin/python benchmarks/explain_oracle.py --only import,speed --runs 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path("/tmp/bench-explain")
PY = sys.executable
CHECKPOINTS = (10, 50, 100, 200)

# The distributions the project's runtime needs (pyproject's dependencies, plus numpy, which resnet_cli
# imports for embed/explain's overlays): whatever grad-cam brings beyond their closure is its extra weight.
RUNTIME = ("torch", "pillow", "typer", "rich", "safetensors", "numpy")
NAMED = ("opencv-python-headless", "ttach", "scikit-learn", "scipy", "matplotlib")
HEAVY = ("cv2", "matplotlib", "sklearn", "scipy", "ttach", "tqdm", "torchvision", "numpy", "PIL", "pandas",
         "joblib", "threadpoolctl", "kiwisolver", "fontTools", "contourpy", "dateutil", "pyparsing")


# --------------------------------------------------------------------------------------------------- helpers

def checkpoint(arch: str) -> Path:
    path = CACHE / f"{arch}.pth"
    if not path.exists():
        sys.path.insert(0, str(ROOT / "tests"))
        from checkpoints import make_checkpoint

        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        make_checkpoint(arch, tmp)
        tmp.replace(path)
        os.sync()  # the 100 MB write-back would otherwise land on the first timings (measured: 4x slower)
    return path


def photo_batch(n: int, offset: int = 0):
    """(n, 224, 224, 3) uint8: 224 crops of the sample photos (resized to 256 on the short side) at varying
    offsets, every other one mirrored."""
    import torch
    from PIL import Image, ImageOps

    photos = sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    crops = []
    for k in range(offset, offset + n):
        img = ImageOps.exif_transpose(Image.open(photos[k % len(photos)])).convert("RGB")
        s = 256 / min(img.size)
        img = img.resize((max(256, round(img.width * s)), max(256, round(img.height * s))), Image.BILINEAR)
        dx, dy = (k * 7) % (img.width - 223), (k * 11) % (img.height - 223)
        img = img.crop((dx, dy, dx + 224, dy + 224))
        if k % 2:
            img = ImageOps.mirror(img)
        crops.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(224, 224, 3))
    return torch.stack(crops)


def ours(arch: str):
    import torch

    from resnet_cli.models import cam
    from resnet_cli.models.inference import Predictor
    from resnet_cli.models.resolve import resolve
    from resnet_cli.models.weights import load

    r = resolve(arch, str(checkpoint(arch)), None, None)
    loaded = load(r)
    pred = Predictor(loaded.module, r.preprocess, device=torch.device("cpu"), dtype=torch.float32)
    pos = cam.block_position(cam.resolve_layer("layer4", r.arch), r.arch)
    return pred, pos, loaded.module.layer4[-1]


def torchvision_model(arch: str):
    import torch
    import torchvision

    m = torchvision.models.get_model(arch)
    m.load_state_dict(torch.load(checkpoint(arch), weights_only=True))
    m.eval()
    return m


def normalised(u8):
    import torch

    x = u8.permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def rss_mb() -> tuple[float, float]:
    """(peak RSS, current RSS) of this process in MB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return peak, current


def child(section: str, *args: str) -> dict:
    """Run one section of this script in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run([PY, __file__, "--child", section, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {section} {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- child sides

IMPORT_CHILD = """
import sys, time, json
before0 = set(sys.modules)
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE") / 2**20
rss0 = rss()
before = set(sys.modules)
if {what!r}:
    __import__({what!r})
t2 = time.perf_counter()
new = sorted(set(sys.modules) - before)
print(json.dumps({{"torch": t1 - t0, "extra": t2 - t1, "new": new, "rss": [rss0, rss()]}}))
"""


def run_import(what: str) -> dict:
    code = IMPORT_CHILD.format(what=what)
    t0 = time.perf_counter()
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"import {what} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def importtime_breakdown() -> dict[str, float]:
    """Cumulative seconds of the first import of each notable package after torch, from -X importtime."""
    proc = subprocess.run([PY, "-X", "importtime", "-c", "import torch; import pytorch_grad_cam"], cwd=ROOT,
                          capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((parts[2].strip(), int(parts[1])))
    start = next(i for i, (name, _) in enumerate(rows) if name == "torch")  # torch's own import ends here
    wanted = ("torchvision", "torch._dynamo", "sklearn", "pandas", "matplotlib", "cv2", "ttach")
    found = {}
    for name, cum in rows[start + 1:]:
        if name in wanted and name not in found:
            found[name] = cum / 1e6
    return {k: found[k] for k in wanted if k in found}


def child_speed(runs: int, warmup: int) -> dict:
    import numpy as np
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pred, pos, _ = ours("resnet50")
    model = torchvision_model("resnet50")
    gc = GradCAM(model=model, target_layers=[model.layer4[-1]])
    u8 = photo_batch(16)
    _, _, targets, _, maps = pred.explain(u8, "gradcam", pos)
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]

    def f_ours():
        return pred.explain(u8, "gradcam", pos)

    def f_gc():
        return gc(input_tensor=normalised(u8), targets=cam_targets)

    def f_classify():
        return pred.classify(u8, 5)

    fns = {"ours": f_ours, "gradcam": f_gc, "classify": f_classify}
    times: dict[str, list[float]] = {k: [] for k in fns}
    results = {}
    for r in range(warmup + runs):
        for k, f in fns.items():
            t0 = time.perf_counter()
            results[k] = f()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[k].append(dt)
    diff = float(np.abs(results["ours"][4].numpy() - results["gradcam"]).max())
    same_targets = bool(torch.equal(results["ours"][2], targets))
    return {"times": times, "max_abs_diff": diff, "targets_stable": same_targets,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def child_memory(variant: str, arch: str, batches: int) -> dict:
    import torch

    batches_u8 = [photo_batch(8, offset=8 * k) for k in range(4)]
    if variant == "ours":
        pred, pos, block = ours(arch)

        def step(u8):
            pred.explain(u8, "gradcam", pos)
    else:
        from pytorch_grad_cam import GradCAM

        model = torchvision_model(arch)
        block = model.layer4[-1]
        if variant == "gradcam-once":
            gc = GradCAM(model=model, target_layers=[block])

            def step(u8):
                gc(input_tensor=normalised(u8), targets=None)
        else:
            def step(u8):
                with GradCAM(model=model, target_layers=[block]) as cam:
                    cam(input_tensor=normalised(u8), targets=None)

    points = {"load": rss_mb()}
    t0 = time.perf_counter()
    for k in range(1, batches + 1):
        step(batches_u8[k % len(batches_u8)])
        if k in CHECKPOINTS or k == batches:
            points[str(k)] = rss_mb()
    return {"points": points, "sec_per_batch": (time.perf_counter() - t0) / batches,
            "hooks_left": len(block._forward_hooks), "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------- parent side

def dist_sizes() -> tuple[dict[str, int], list[str]]:
    """Bytes on disk of every distribution grad-cam requires (transitively) that the runtime closure does
    not, and that list."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = default_environment() | {"extra": ""}

    def closure(names) -> set[str]:
        seen, todo = set(), [canonicalize_name(n) for n in names]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            seen.add(name)
            for req in dist.requires or []:
                r = Requirement(req)
                if r.marker is None or r.marker.evaluate(env):
                    todo.append(canonicalize_name(r.name))
        return seen

    extra = sorted(closure(["grad-cam"]) - closure(RUNTIME))
    sizes = {}
    for name in extra:
        dist = metadata.distribution(name)
        total = 0
        for f in dist.files or []:
            p = Path(dist.locate_file(f))
            if p.is_file():
                total += p.stat().st_size
        sizes[name] = total
    return sizes, extra


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its waited-for children)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def others_report(start: tuple[float, float], wall_start: float) -> None:
    """One line: how much CPU other processes took while a section ran (the machine may be shared)."""
    busy, ours_ = cpu_seconds()
    other = max(0.0, (busy - start[0]) - (ours_ - start[1]))
    capacity = (time.perf_counter() - wall_start) * (os.cpu_count() or 1)
    share = other / capacity
    flag = "  <- NOT a quiet machine: timings above are unreliable, run again" if share > 0.05 else ""
    print(f"   [other processes: {other:.1f} CPU-s of {capacity:.0f} available ({share:.0%}) during this section]{flag}")


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def section_import(runs: int) -> None:
    variants = {"torch alone": "", "+ pytorch_grad_cam": "pytorch_grad_cam", "+ resnet_cli.models.cam": "resnet_cli.models.cam"}
    data: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(runs + 1):  # round 0 warms the page cache and is discarded
        for k, what in variants.items():
            out = run_import(what)
            if r:
                data[k].append(out)
    base_wall = med([d["wall"] for d in data["torch alone"]])
    print(f"\n1. Import, fresh process each, median of {runs} (one discarded warm-up round)")
    print(f"   {'':22} {'import torch s':>14} {'extra import s':>14} {'process wall s':>14} {'wall - torch-alone':>19}"
          f" {'new modules':>11} {'RSS MB torch/after':>19}")
    for k in variants:
        d = data[k]
        wall = med([x["wall"] for x in d])
        extra = med([x["extra"] for x in d])
        spread = f"[{min(x['extra'] for x in d):.3f}-{max(x['extra'] for x in d):.3f}]"
        rss = f"{med([x['rss'][0] for x in d]):.0f} / {med([x['rss'][1] for x in d]):.0f}"
        print(f"   {k:22} {med([x['torch'] for x in d]):14.3f} {extra:14.3f} {wall:14.3f} {wall - base_wall:+19.3f}"
              f" {len(d[0]['new']):11d} {rss:>19}   extra s range {spread}")
    for k in ("+ pytorch_grad_cam", "+ resnet_cli.models.cam"):
        new = data[k][0]["new"]
        tops = sorted({m.split(".")[0] for m in new})
        heavy = [h for h in HEAVY if h in tops]
        print(f"   {k} brings in {len(tops)} top-level packages; notable: {', '.join(heavy) or '-'}")
        print(f"      all: {', '.join(t for t in tops if not t.startswith('_'))}")
    print(f"   where grad-cam's {med([x['extra'] for x in data['+ pytorch_grad_cam']]):.2f} s go "
          "(one `-X importtime` run, cumulative s, nested: pandas and scipy load inside sklearn, torch._dynamo inside torchvision):")
    print("      " + ",  ".join(f"{k} {v:.2f}" for k, v in importtime_breakdown().items()))
    sizes, extra = dist_sizes()
    named = {canonicalize(n) for n in NAMED}
    print("   On disk (RECORD sizes), distributions grad-cam installs beyond the project's runtime closure "
          f"({', '.join(RUNTIME)}):")
    row = []
    for name in sorted(extra, key=lambda n: -sizes[n]):
        row.append(f"{name}{'*' if name in named else ''} {sizes[name] / 2**20:.1f}")
    for i in range(0, len(row), 5):
        print("      " + ";  ".join(row[i:i + 5]))
    five = sum(sizes.get(canonicalize(n), 0) for n in NAMED)
    print(f"   * the five named (opencv-python-headless, ttach, scikit-learn, scipy, matplotlib): {five / 2**20:.1f} MB;"
          f" everything grad-cam adds: {sum(sizes.values()) / 2**20:.1f} MB")


def canonicalize(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def section_speed(runs: int, warmup: int) -> None:
    out = child("speed", str(runs), str(warmup))
    t = out["times"]
    print(f"\n2. Speed: resnet50, batch of 16 (224x224), gradcam at layer4.2; torch {out['torch']}, "
          f"{out['threads']} threads; median of {runs} after {warmup} warm-up round(s), interleaved")
    print(f"   {'':44} {'median s':>9} {'img/s':>7} {'min-max s':>13} {'vs grad-cam':>11}")
    labels = {"ours": "ours: Predictor.explain (maps + top-k)",
              "gradcam": "pytorch_grad_cam.GradCAM (maps only)",
              "classify": "ours: Predictor.classify (top-k only)"}
    g = med(t["gradcam"])
    for k, label in labels.items():
        m = med(t[k])
        print(f"   {label:44} {m:9.3f} {16 / m:7.1f} {min(t[k]):6.2f}-{max(t[k]):<6.2f} {g / m:10.2f}x")
    print(f"   maps: max |ours - grad-cam| = {out['max_abs_diff']:.2e} (same checkpoint, same targets)")


def section_memory(arch: str, batches: int) -> None:
    print(f"\n3. Memory: {arch}, {batches} batches of 8 (224x224), gradcam at layer4's last block, each variant in "
          "its own process;\n   MB as peak (ru_maxrss) / current (statm) RSS")
    points = ["load"] + [str(c) for c in CHECKPOINTS if c <= batches]
    print(f"   {'':30}" + "".join(f"{('after ' + p) if p != 'load' else 'after load':>15}" for p in points)
          + f"{'s/batch':>9}{'hooks left':>11}")
    labels = {"ours": "ours (Predictor.explain)", "gradcam-once": "grad-cam, constructed once",
              "gradcam-with": "grad-cam, `with` per batch"}
    for variant, label in labels.items():
        out = child("memory", variant, arch, str(batches))
        cells = "".join(f"{'%.0f / %.0f' % tuple(out['points'][p]):>15}" for p in points)
        print(f"   {label:30}{cells}{out['sec_per_batch']:9.2f}{out['hooks_left']:11d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="import,speed,memory", help="comma-separated sections")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--memory-arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        section, *rest = args.child
        if section == "speed":
            result = child_speed(int(rest[0]), int(rest[1]))
        else:
            result = child_memory(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return
    sections = args.only.split(",")
    t0 = time.perf_counter()
    for arch in {"resnet50"} | ({args.memory_arch} if "memory" in sections else set()):
        checkpoint(arch)  # made (and cached) before any timing
    load = os.getloadavg()
    print(f"explain vs pytorch-grad-cam | {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()} | load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    runners = {"import": lambda: section_import(args.runs), "speed": lambda: section_speed(args.runs, args.warmup),
               "memory": lambda: section_memory(args.memory_arch, args.batches)}
    for name, section in runners.items():
        if name in sections:
            start, wall_start = cpu_seconds(), time.perf_counter()
            section()
            others_report(start, wall_start)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
