"""The speed benchmark: resnet-classify against the seeds' loop, ONNX Runtime and OpenVINO, whole process
(start to exit, as a user times it), on the same generated images and the same seeded resnet50 checkpoint
("ours --weights model.onnx": that checkpoint after `resnet-classify export`, run by ONNX Runtime in our
pipeline, against "onnxruntime", the plain loop).

Runs are interleaved (every configuration once, then again, ...) so machine noise hits all of them alike;
the table shows medians, ratios of medians, and each configuration's peak RSS. Needs the bench extra:
`pip install -e '.[bench]'`.

    python benchmarks/bench.py                      # everything, 3 runs
    python benchmarks/bench.py --runs 5 --sets imagenet --only ours,seeds
    python benchmarks/bench.py --agreement          # bf16 / fast-decode agreement with the exact path
    python benchmarks/bench.py --memory             # peak RSS: 100 against 10,000 images
    python benchmarks/bench.py --memory-explain     # explain's peak RSS: 100 against 1,000 images
    python benchmarks/bench.py --only ours --baseline ../old-checkout   # this code against another checkout
    python benchmarks/bench.py --sets imagenet --configs seeds,ours,baseline --baseline ../old   # just these

Each run also records its CPU seconds and the CPU seconds the rest of the machine took meanwhile (/proc/stat);
a run during which others used more than 5% of a core is DISTURBED and run again (--retries, default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

PY = sys.executable
CLI = str(Path(PY).parent / "resnet-classify")


def busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot (every core; steal included: a VM neighbour's)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_measured(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float, float, float | None]:
    """Wall seconds, peak RSS (MB), CPU seconds of one whole process, and the CPU seconds everything else on
    the machine took meanwhile (None where /proc/stat is missing): the measure of a disturbed run."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child can never block on it
        busy0 = busy_s() if os.path.exists("/proc/stat") else None
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy1 = busy_s() if busy0 is not None else None
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode(errors='replace')[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    others = None if busy0 is None else max(0.0, busy1 - busy0 - cpu)
    return wall, usage.ru_maxrss / 1024, cpu, others


def run(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one whole process."""
    return run_measured(cmd, stdout)[:2]


# A run during which the rest of the machine used more than this share of one core is disturbed: on a shared
# 2-core machine one busy neighbour slows a two-threaded model (and the seeds' loop far more) by 2-10x.
DISTURBED = 0.05


def prepare(work: Path, sets: list[str]) -> dict:
    from checkpoints import make_checkpoint
    from images import make_set

    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "resnet50-seeded.pth"
    if not ckpt.exists():
        make_checkpoint("resnet50", ckpt)
    onnx = work / "resnet50-seeded.onnx"
    if not onnx.exists():
        subprocess.run([PY, str(HERE / "export_onnx.py"), str(ckpt), str(onnx)], check=True,
                       capture_output=True)
    ours_onnx = work / "resnet50-seeded-export.onnx"  # resnet-classify export's file: metadata, parity-checked
    if not ours_onnx.exists():
        subprocess.run([CLI, "export", "-a", "resnet50", "-w", str(ckpt), "-o", str(ours_onnx), "-q"], check=True,
                       capture_output=True)
    folders = {s: make_set(s, work / s) for s in sets}
    # int8: ours (export --int8, OpenVINO + NNCF through our pipeline) and OpenVINO's own int8 loop (NNCF on the
    # same calibration photos: copies of the imagenet set's first 300 by name; ours checked on copies of the other
    # 212, held out as export --int8 requires); the seeded checkpoint's head is random, so its agreement says
    # little (docs/export.md): --min-agreement 0 writes it whatever it is
    calibration, held_out = work / "int8-calibration", work / "int8-check"
    if not held_out.exists():
        photos = sorted(Path(folders["imagenet"]).glob("*.jpg"))
        for folder, part in ((calibration, photos[:300]), (held_out, photos[300:])):
            folder.mkdir(exist_ok=True)
            for photo in part:
                shutil.copyfile(photo, folder / photo.name)
    ours_int8 = work / "resnet50-seeded-int8.xml"
    if not ours_int8.exists():
        res = subprocess.run([CLI, "export", "-a", "resnet50", "-w", str(ckpt), "-o", str(ours_int8), "--int8",
                              "--calibrate", str(calibration), "--check", str(held_out),
                              "--min-agreement", "0", "-q"], check=True, capture_output=True)
        (work / "resnet50-seeded-int8.json").write_bytes(res.stdout)
    nncf_int8 = work / "resnet50-nncf-int8.xml"
    if not nncf_int8.exists():
        subprocess.run([PY, str(HERE / "nncf_loop_model.py"), str(onnx), str(calibration), str(nncf_int8)],
                       check=True, capture_output=True)
    # evaluate's throughput: the same images as a labelled manifest (the labels do not change the work)
    manifests = {}
    for s, folder in folders.items():
        manifests[s] = work / f"{s}-labels.csv"
        rows = "".join(f"{Path(folder).name}/{p.name},0\n" for p in sorted(Path(folder).glob("*.jpg")))
        manifests[s].write_text("path,label\n" + rows)
    return {"ckpt": str(ckpt), "onnx": str(onnx), "ours_onnx": str(ours_onnx), "folders": folders,
            "manifests": manifests, "ours_int8": str(ours_int8), "nncf_int8": str(nncf_int8)}


def cli_of(checkout: str | None) -> list[str]:
    """The command line of resnet-classify: this checkout's console script, or another checkout's code run the
    way the console script runs it (for before/after comparisons)."""
    if checkout is None:
        return [CLI]
    code = f"import sys; sys.path.insert(0, {str(Path(checkout).resolve())!r}); from resnet_cli.cli import main; main()"
    return [PY, "-c", code]


def configs(setname: str, env: dict, only: set[str] | None, exact: set[str] | None = None
            ) -> dict[str, list[str]]:
    folder, ckpt, onnx = str(env["folders"][setname]), env["ckpt"], env["onnx"]
    ours = [CLI, folder, "-a", "resnet50", "-w", ckpt, "-q", "-f", "jsonl"]
    baseline = env.get("baseline")
    out = {
        "seeds": [PY, str(HERE / "seed_loop.py"), ckpt, folder],
        "onnxruntime": [PY, str(HERE / "runtime_loop.py"), "onnxruntime", onnx, folder],
        "openvino": [PY, str(HERE / "runtime_loop.py"), "openvino", onnx, folder],
        "ours": ours,
        "ours --precision bf16": ours + ["--precision", "bf16"],
        # the same network exported by `resnet-classify export`, run by ONNX Runtime through our pipeline
        "ours --weights model.onnx": [CLI, folder, "-w", env["ours_onnx"], "-q", "-f", "jsonl"],
        "ours --fast-decode": ours + ["--fast-decode"],
        # int8: our export --int8 file through our pipeline, against OpenVINO's own int8 loop (runtime_loop.py on
        # the IR NNCF made from the same calibration photos)
        "ours --weights model-int8.xml": [CLI, folder, "-w", env["ours_int8"], "-q", "-f", "jsonl"],
        "openvino int8": [PY, str(HERE / "runtime_loop.py"), "openvino", env["nncf_int8"], folder],
        "ours evaluate": [CLI, "evaluate", str(env["manifests"][setname]), "-a", "resnet50", "-w", ckpt, "-q",
                          "-f", "json"],
        "ours embed": [CLI, "embed", folder, "-a", "resnet50", "-w", ckpt, "-q", "-o",
                       str(Path(folder).parent / "embeddings.npy")],
        "ours explain": [CLI, "explain", folder, "-a", "resnet50", "-w", ckpt, "-q", "-f", "jsonl", "--out",
                         str(Path(folder).parent / "explanations")],
        "ours --report": ours + ["--report", str(Path(folder).parent / "report.html")],
    }
    if baseline:
        base = [*cli_of(baseline), *ours[1:]]
        out["baseline"] = base
        out["baseline --precision bf16"] = base + ["--precision", "bf16"]
        out["baseline --fast-decode"] = base + ["--fast-decode"]
    if setname == "imagenet":
        out.pop("ours --fast-decode")  # nothing to gain on small images: draft mode never engages
        out.pop("baseline --fast-decode", None)
    else:
        out.pop("ours evaluate")  # one set is enough to compare evaluate and embed with classify
        out.pop("ours embed")
        out.pop("ours explain")
        out.pop("ours --report")
        out.pop("openvino")
        out.pop("openvino int8")
        out.pop("ours --weights model-int8.xml")
        out.pop("ours --precision bf16")
        out.pop("baseline --precision bf16", None)
    if exact is not None:  # --configs: these configurations and no others
        return {k: v for k, v in out.items() if k in exact}
    # --only ours keeps the baseline too: it is there to be compared with ours
    return {k: v for k, v in out.items()
            if only is None or k.split()[0] in only or k in only or (k.startswith("baseline") and "ours" in only)}


def bench_set(setname: str, env: dict, runs: int, only, retries: int = 2, exact=None) -> list[dict]:
    n = len(list(Path(env["folders"][setname]).glob("*.jpg")))
    cfgs = configs(setname, env, only, exact)
    times: dict[str, list[float]] = {k: [] for k in cfgs}
    cpus: dict[str, list[float]] = {k: [] for k in cfgs}
    others: dict[str, list[float | None]] = {k: [] for k in cfgs}
    rss: dict[str, float] = {}
    for r in range(runs):
        for name, cmd in cfgs.items():
            for _ in range(1 + retries):  # a disturbed run is run again, in its place in the round
                wall, peak, cpu, other = run_measured(cmd)
                disturbed = other is not None and other > DISTURBED * wall
                print(f"  [{setname} run {r + 1}/{runs}] {name:24s} {wall:7.2f} s  cpu {cpu:6.2f} s  others "
                      f"{'?' if other is None else f'{other:5.2f}'} s{'  DISTURBED' if disturbed else ''}",
                      file=sys.stderr, flush=True)
                if not disturbed:
                    break
            times[name].append(wall)
            cpus[name].append(cpu)
            others[name].append(other)
            rss[name] = max(rss.get(name, 0), peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for name in cfgs:
        rows.append({"set": setname, "images": n, "config": name, "median_s": round(med[name], 2),
                     "runs_s": [round(t, 2) for t in times[name]], "img_per_s": round(n / med[name], 1),
                     "vs_seeds": round(med["seeds"] / med[name], 2) if "seeds" in med else None,
                     "vs_onnxruntime": round(med["onnxruntime"] / med[name], 2) if "onnxruntime" in med else None,
                     "vs_openvino": round(med["openvino"] / med[name], 2) if "openvino" in med else None,
                     "vs_baseline": round(med["baseline"] / med[name], 2) if "baseline" in med else None,
                     "peak_rss_mb": round(rss[name]), "cpu_s": round(statistics.median(cpus[name]), 2),
                     "cpu_runs_s": [round(c, 2) for c in cpus[name]],
                     "others_cpu_s": [None if o is None else round(o, 2) for o in others[name]],
                     "disturbed_runs": sum(o is not None and o > DISTURBED * t for o, t in zip(others[name],
                                                                                               times[name]))})
    return rows


def bench_cold(env: dict, runs: int) -> list[dict]:
    one = sorted(Path(env["folders"]["imagenet"]).glob("*.jpg"))[0]
    args = [str(one), "-a", "resnet50", "-w", env["ckpt"], "-f", "jsonl"]
    cmds = {"python -c 'import torch'": [PY, "-c", "import torch"], "ours, one image": [CLI, *args]}
    if env.get("baseline"):
        cmds["baseline, one image"] = [*cli_of(env["baseline"]), *args]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            times[name].append(run(cmd)[0])
    base = statistics.median(times["python -c 'import torch'"])
    return [{"set": "cold", "images": 1, "config": k, "median_s": round(statistics.median(v), 2),
             "runs_s": [round(t, 2) for t in v], "vs_import_torch": round(statistics.median(v) / base, 2)}
            for k, v in times.items()]


def agreement(env: dict) -> list[dict]:
    """How often bf16 (imagenet set + sample photos), --fast-decode (12mp set) and the int8 models (imagenet set:
    ours against ours in fp32, OpenVINO's int8 loop against its fp32 loop) keep fp32's answers."""
    def preds(folder, *extra):
        res = subprocess.run([CLI, str(folder), "-a", "resnet50", "-w", env["ckpt"], "-f", "jsonl", "-q", *extra],
                             capture_output=True, check=True)
        return [json.loads(x) for x in res.stdout.splitlines()]

    out = []
    cases = [("bf16", "imagenet", ["--precision", "bf16"]), ("bf16", "sample_images", ["--precision", "bf16"])]
    if "12mp" in env["folders"]:
        cases.append(("fast-decode", "12mp", ["--fast-decode"]))
    for what, setname, extra in cases:
        folder = ROOT / "sample_images" if setname == "sample_images" else env["folders"][setname]
        exact, other = preds(folder), preds(folder, *extra)
        top1 = sum(a["topk"][0]["index"] == b["topk"][0]["index"] for a, b in zip(exact, other))
        top5 = sum({t["index"] for t in a["topk"]} == {t["index"] for t in b["topk"]} for a, b in zip(exact, other))
        dp = max(abs(a["topk"][0]["probability"] - b["topk"][0]["probability"]) for a, b in zip(exact, other))
        out.append({"what": what, "set": setname, "images": len(exact), "top1_same": top1, "top5_same_set": top5,
                    "max_top1_prob_diff": round(dp, 4)})
    folder = env["folders"]["imagenet"]
    exact = preds(folder)
    res = subprocess.run([CLI, str(folder), "-w", env["ours_int8"], "-f", "jsonl", "-q"], capture_output=True,
                         check=True)
    int8 = [json.loads(x) for x in res.stdout.splitlines()]
    out.append({"what": "ours int8 (export --int8, OpenVINO + NNCF)", "set": "imagenet", "images": len(exact),
                "top1_same": sum(a["topk"][0]["index"] == b["topk"][0]["index"] for a, b in zip(exact, int8))})

    def loop(model):  # runtime_loop.py prints "name label probability" per image
        res = subprocess.run([PY, str(HERE / "runtime_loop.py"), "openvino", model, str(folder)],
                             capture_output=True, check=True, text=True)
        return [line.split(" ")[1:-1] for line in res.stdout.splitlines()]
    a, b = loop(env["onnx"]), loop(env["nncf_int8"])
    out.append({"what": "OpenVINO int8 loop (NNCF) against its fp32 loop", "set": "imagenet", "images": len(a),
                "top1_same": sum(x == y for x, y in zip(a, b))})
    return out


def memory(env_work: Path, n_large: int = 10_000) -> list[dict]:
    """Peak RSS of a 100-image run against a 10,000-image run (64x48 JPEGs, same model): flat means the
    pipeline holds a bounded window, not the whole job."""
    from checkpoints import make_checkpoint
    from images import make_set

    ckpt = env_work / "resnet50-seeded.pth"
    if not ckpt.exists():
        make_checkpoint("resnet50", ckpt)
    rows = []
    for n in (100, n_large):
        folder = make_set("tiny", env_work / f"tiny{n}", n)
        wall, peak = run([CLI, str(folder), "-a", "resnet50", "-w", str(ckpt), "-q", "-f", "jsonl"])
        rows.append({"set": f"tiny{n}", "images": n, "config": "ours", "median_s": round(wall, 1),
                     "img_per_s": round(n / wall, 1), "peak_rss_mb": round(peak)})
    rows[-1]["rss_growth_mb"] = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    return rows


def memory_explain(env_work: Path, sizes=(100, 1000)) -> list[dict]:
    """Peak RSS of explain (with --report) on 100 against 1,000 photo-sized JPEGs (500x375): the maps, the
    overlays and the report's cards must not pile up."""
    from checkpoints import make_checkpoint
    from images import make_set

    ckpt = env_work / "resnet50-seeded.pth"
    if not ckpt.exists():
        make_checkpoint("resnet50", ckpt)
    rows = []
    for n in sizes:
        folder = make_set("imagenet", env_work / f"explain{n}", n)
        wall, peak = run([CLI, "explain", str(folder), "-a", "resnet50", "-w", str(ckpt), "-q", "-f", "jsonl",
                          "--out", str(env_work / f"explanations{n}"), "--report", str(env_work / f"r{n}.html")])
        rows.append({"set": f"explain{n}", "images": n, "config": "ours explain --report", "median_s": round(wall, 1),
                     "img_per_s": round(n / wall, 1), "peak_rss_mb": round(peak)})
    rows[-1]["rss_growth_mb"] = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    return rows


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    import torch

    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python " \
           f"{platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sets", default="imagenet,12mp")
    ap.add_argument("--only", default=None, help="comma-separated: seeds,onnxruntime,openvino,ours")
    ap.add_argument("--configs", default=None,
                    help="comma-separated exact configuration names (e.g. 'seeds,ours,baseline'); overrides --only")
    ap.add_argument("--work", default=str(ROOT / "bench-out"), help="where images, checkpoint and ONNX go")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--agreement", action="store_true", help="only measure bf16 / fast-decode agreement")
    ap.add_argument("--memory", action="store_true", help="only measure peak RSS, 100 vs 10,000 images")
    ap.add_argument("--memory-explain", action="store_true",
                    help="only measure explain's peak RSS, 100 vs 1,000 images")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--retries", type=int, default=2,
                    help="run a configuration again (at most this often) when the rest of the machine was busy")
    ap.add_argument("--baseline", default=None, metavar="CHECKOUT",
                    help="also run the resnet-classify of another checkout (a git worktree of an older commit)")
    args = ap.parse_args()
    sets = args.sets.split(",")
    env = prepare(Path(args.work), sorted(set(sets) | {"imagenet"}))
    env["baseline"] = args.baseline
    results: dict = {"machine": machine()}
    print(f"machine: {results['machine']}")
    if args.memory:
        results["rows"] = memory(Path(args.work))
    elif args.memory_explain:
        results["rows"] = memory_explain(Path(args.work))
    elif args.agreement:
        results["agreement"] = agreement(env)
    else:
        only = set(args.only.split(",")) if args.only else None
        results["rows"] = [row for s in sets for row in bench_set(s, env, args.runs, only, args.retries,
                                                  set(args.configs.split(',')) if args.configs else None)]
        if not args.no_cold:
            results["rows"] += bench_cold(env, max(5, args.runs))
    for key in ("rows", "agreement"):
        for row in results.get(key, []):
            print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
