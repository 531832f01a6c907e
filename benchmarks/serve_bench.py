"""The serving benchmark: `resnet-classify serve` against the in-process classify, a LitServe server with its own
batching (benchmarks/serve_litserve.py) and TorchServe with its image_classifier handler, on the same seeded
checkpoint (tests/checkpoints.py; resnet50 in torchvision's layout) and the same 512 JPEGs of 500x375
(benchmarks/images.py), all on loopback.

    python benchmarks/serve_bench.py --torchserve-bin ts-venv/bin           # 3 rounds, the full table
    python benchmarks/serve_bench.py --quick --servers ours                 # a smoke run (~1 min)
    python benchmarks/serve_bench.py --rounds 5 --output serve-table.md --json serve.json
    python benchmarks/serve_bench.py --images 256 --rss-requests 0          # a shorter run: half the images
    python benchmarks/serve_bench.py --rounds 0 --servers ours              # the RSS phase alone

What is measured, per server, in each round:
- concurrency 1: the same 500x375 JPEG posted --c1-requests times, one at a time (after 3 warm-up requests):
  p50 and p95 of the request latency as the client sees it (connection kept alive);
- concurrency --concurrency (16): every image of the set posted once by that many client threads (after one
  warm-up request per thread): throughput (images / wall seconds from the first request to the last answer)
  and p50/p99 latency. Every answer's top-1 class is compared with the in-process classify's for that image.
- the references, in a process of their own: the in-process time of decoding and classifying the one image
  alone (`resnet_cli.Classifier(...)(path)`, p50 of --c1-requests calls after 3 warm-up calls: the target
  of the c=1 latency), the whole folder through `resnet_cli.classify` in-process (the job and engine the
  classify command runs, without the interpreter's start: the target of the throughput), and the
  `resnet-classify` command on the folder, whole process, as a user times it.
- RSS: a separate phase, our server on a resnet18 checkpoint (stated in the table), --rss-requests (10,000)
  requests at the same concurrency cycling through the images; the server process's resident set sampled
  with psutil every --rss-every requests: first (after the warm-up), last and max.

Rounds are interleaved (references, ours, LitServe, TorchServe; then again, the starting point rotating) and
the table shows the medians over rounds and ratios of medians: on a shared machine noise hits every server
alike; a measurement during which the rest of the machine used more than --disturbed cores (0.1) is taken
again, in its place, at most --retries times (2), as benchmarks/bench.py does. Only one server runs at a
time: each is started on 127.0.0.1 on a free port for its measurement, and its whole process group is stopped
(SIGTERM, then SIGKILL) right after it, so nothing else loads the CPU and nothing is left behind. Each
measurement also records how many cores the rest of the machine used meanwhile (/proc/stat minus the server's
and the client's CPU time): the "others" column.

How each server is run (the defaults a user of each would pick):
- ours: `resnet-classify serve -a ARCH -w CKPT --host 127.0.0.1 --port P -q` with its defaults (--max-batch 32
  on a CPU, --max-wait-ms 10); POST /v1/classify, the image as the body (Content-Type: image/jpeg).
- LitServe: max_batch_size = the concurrency, batch_timeout 10 ms, one inference worker, one API server;
  POST /predict with a multipart upload (part "content"), LitServe's way of taking a file.
- TorchServe: a .mar of the same checkpoint (eager: a model.py subclassing torchvision's ResNet, the
  state_dict as the serialized file, index_to_name.json from torchvision's ImageNet categories) with the
  built-in image_classifier handler; one worker, batchSize = the concurrency, maxBatchDelay 10 ms, token
  authorization off; POST /predictions/resnet, the image as the body. The handler resizes to 256 whatever the
  weights (torchvision's resnet50 weights, and so classify and the LitServe server, resize to 232): its top-1
  can differ from classify's on a few images for that reason alone. torchserve and torch-model-archiver come
  from `--torchserve-bin`, else from PATH; Java 11+ must be on PATH. Give TorchServe a virtual environment of
  its own, as its users do:

      python -m venv ts-venv && ts-venv/bin/pip install torchserve torch-model-archiver captum torch torchvision

  (captum: TorchServe's vision handler imports it). Its base handler also imports openvino and onnxruntime
  when they are installed, so keep the bench extra's out of that environment. A server that cannot start is
  reported with the reason and the others are compared.

The load generator is httpx (one Client, a connection pool of --concurrency keep-alive connections) driven by
a thread pool; requests are bounded (nothing runs open-ended). Needs the serve and bench extras plus
litserve for the LitServe row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from bench import busy_s, machine  # noqa: E402  (the speed benchmark's: /proc/stat, the machine's line)

PY = sys.executable
SERVERS = ("ours", "litserve", "torchserve")
NAMES = {"ours": "resnet-classify serve", "litserve": "LitServe", "torchserve": "TorchServe"}
BLOCKS = {"resnet18": ("BasicBlock", [2, 2, 2, 2]), "resnet34": ("BasicBlock", [3, 4, 6, 3]),
          "resnet50": ("Bottleneck", [3, 4, 6, 3]), "resnet101": ("Bottleneck", [3, 4, 23, 3]),
          "resnet152": ("Bottleneck", [3, 8, 36, 3])}


def env_here() -> dict:
    """The environment of a child running this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (linear interpolation between the closest ranks)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# ---------------------------------------------------------------------------------------------- servers

class Server:
    """One server process group on 127.0.0.1: started, polled until ready, stopped with its whole group."""

    name = "?"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc: subprocess.Popen | None = None
        self.log = None
        self.ready_s = None

    def command(self) -> tuple[list[str], dict, Path]:
        raise NotImplementedError

    def ready(self, client) -> bool:
        raise NotImplementedError

    def post(self, client, name: str, data: bytes):
        raise NotImplementedError

    @staticmethod
    def top1(answer) -> str:
        return answer["topk"][0]["label"]

    def start(self, client, timeout_s: float = 300.0) -> None:
        cmd, env, cwd = self.command()
        self.log = tempfile.TemporaryFile()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                                   + self.log_tail())
            try:
                if self.ready(client):
                    self.ready_s = time.perf_counter() - t0
                    return
            except Exception:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]

    def processes(self):
        import psutil

        try:
            main = psutil.Process(self.proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        """CPU seconds the server's processes have used so far (user + system)."""
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except Exception:
                pass
        return total

    def rss_mb(self) -> float:
        """The resident set of the server's processes, MB (each counted once)."""
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except Exception:
                pass
        return total / 2**20

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after 30 s; every process of the group reaped."""
        if self.proc is None:
            return
        import psutil

        procs = self.processes()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        self.proc.wait()
        self.proc = None
        if self.log is not None:
            self.log.close()


class Ours(Server):
    name = "ours"

    def __init__(self, work: Path, arch: str, ckpt: Path) -> None:
        super().__init__(work)
        self.arch, self.ckpt, self.port = arch, ckpt, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self):
        return ([PY, "-m", "resnet_cli", "serve", "-a", self.arch, "-w", str(self.ckpt), "--host", "127.0.0.1",
                 "--port", str(self.port), "-q"], env_here(), ROOT)

    def ready(self, client) -> bool:
        return client.get(self.url + "/readyz").status_code == 200

    def post(self, client, name, data):
        return client.post(self.url + "/v1/classify", content=data,
                           headers={"Content-Type": "image/jpeg", "X-Filename": name})


class LitServe(Server):
    name = "litserve"

    def __init__(self, work: Path, arch: str, ckpt: Path, max_batch: int) -> None:
        super().__init__(work)
        self.arch, self.ckpt, self.max_batch, self.port = arch, ckpt, max_batch, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self):
        return ([PY, str(HERE / "serve_litserve.py"), "--arch", self.arch, "--weights", str(self.ckpt),
                 "--port", str(self.port), "--max-batch", str(self.max_batch), "--batch-timeout", "0.01"],
                env_here(), self.work)

    def ready(self, client) -> bool:
        return client.get(self.url + "/health").status_code == 200

    def post(self, client, name, data):
        return client.post(self.url + "/predict", files={"content": (name, data, "image/jpeg")})


class TorchServe(Server):
    name = "torchserve"

    def __init__(self, work: Path, arch: str, ckpt: Path, max_batch: int, bin_dir: str | None) -> None:
        super().__init__(work)
        self.arch, self.ckpt, self.max_batch = arch, ckpt, max_batch
        found = shutil.which("torchserve", path=bin_dir) if bin_dir else shutil.which("torchserve")
        archiver = shutil.which("torch-model-archiver", path=bin_dir) if bin_dir else \
            shutil.which("torch-model-archiver")
        if not found or not archiver:
            raise RuntimeError("torchserve or torch-model-archiver not found ("
                               + (f"in {bin_dir}" if bin_dir else "on PATH; give --torchserve-bin") + ")")
        if not shutil.which("java"):
            raise RuntimeError("TorchServe's frontend needs Java (11 or later), and no java is on PATH")
        self.bin = Path(found).parent
        self.ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc_inference",
                                               "grpc_management")}
        self.url = f"http://127.0.0.1:{self.ports['inference']}"
        self.mgmt = f"http://127.0.0.1:{self.ports['management']}"
        self.dir = work / "torchserve"
        self.make_mar(archiver)

    def make_mar(self, archiver: str) -> None:
        """model.py (torchvision's ResNet with this architecture's blocks), index_to_name.json, the .mar."""
        import torchvision

        (self.dir / "store").mkdir(parents=True, exist_ok=True)
        block, layers = BLOCKS[self.arch]
        cls = self.arch.capitalize().replace("net", "Net")
        (self.dir / "model.py").write_text(
            f"from torchvision.models.resnet import {block}, ResNet\n\n\n"
            f"class {cls}(ResNet):\n    def __init__(self):\n        super().__init__({block}, {layers})\n")
        categories = torchvision.models.get_model_weights(self.arch).DEFAULT.meta["categories"]
        (self.dir / "index_to_name.json").write_text(json.dumps({str(i): c for i, c in enumerate(categories)}))
        subprocess.run([archiver, "--model-name", "resnet", "--version", "1.0", "--model-file", "model.py",
                        "--serialized-file", str(self.ckpt), "--handler", "image_classifier", "--extra-files",
                        "index_to_name.json", "--export-path", "store", "-f"], cwd=self.dir, check=True,
                       capture_output=True)
        models = {"resnet": {"1.0": {"defaultVersion": True, "marName": "resnet.mar", "minWorkers": 1,
                                     "maxWorkers": 1, "batchSize": self.max_batch, "maxBatchDelay": 10,
                                     "responseTimeout": 120}}}
        p = self.ports
        (self.dir / "config.properties").write_text(
            f"inference_address=http://127.0.0.1:{p['inference']}\n"
            f"management_address=http://127.0.0.1:{p['management']}\n"
            f"metrics_address=http://127.0.0.1:{p['metrics']}\n"
            f"grpc_inference_port={p['grpc_inference']}\ngrpc_management_port={p['grpc_management']}\n"
            "disable_token_authorization=true\ndefault_workers_per_model=1\ninstall_py_dep_per_model=false\n"
            f"model_store={self.dir / 'store'}\nmodels={json.dumps(models)}\n")

    def command(self):
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "")])
        return ([str(self.bin / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config",
                 "config.properties", "--model-store", "store", "--models", "resnet=resnet.mar",
                 "--disable-token-auth"], env, self.dir)

    def ready(self, client) -> bool:
        r = client.get(self.mgmt + "/models/resnet")
        workers = r.json()[0]["workers"] if r.status_code == 200 else []
        return bool(workers) and all(w["status"] == "READY" for w in workers) \
            and client.get(self.url + "/ping").status_code == 200

    def post(self, client, name, data):
        return client.post(self.url + "/predictions/resnet", content=data, headers={"Content-Type": "image/jpeg"})

    @staticmethod
    def top1(answer) -> str:
        return max(answer, key=answer.get)


# ---------------------------------------------------------------------------------------------- the load

def load(server: Server, client, requests: list[tuple[str, bytes]], concurrency: int, *, every: int = 0,
         on_every=None) -> dict:
    """Post every request once, `concurrency` at a time. Returns latencies (s), wall (s), the top-1 label of
    each answer by name, the number of failed requests (and the first failure), and the CPU seconds the rest of
    the machine used meanwhile. `on_every(done)` is called after every `every` answers."""
    lat: list[float] = []
    top1: dict[str, str] = {}
    failures: list[str] = []
    lock = threading.Lock()
    counter = itertools.count()
    done = [0]

    def worker() -> None:
        while True:
            with lock:
                i = next(counter)
            if i >= len(requests):
                return
            name, data = requests[i]
            t0 = time.perf_counter()
            try:
                r = server.post(client, name, data)
                ok = r.status_code == 200
                answer = r.json() if ok else None
                why = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
            except Exception as exc:
                ok, answer, why = False, None, f"{type(exc).__name__}: {exc}"
            t = time.perf_counter() - t0
            with lock:
                if ok:
                    lat.append(t)
                    top1[name] = server.top1(answer)
                else:
                    failures.append(why)
                done[0] += 1
                n = done[0]
            if every and n % every == 0 and on_every is not None:
                on_every(n)

    cpu0, busy0, own0 = server.cpu_s(), busy_s(), time.process_time()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="client") as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    others = max(0.0, busy_s() - busy0 - (server.cpu_s() - cpu0) - (time.process_time() - own0))
    return {"latencies": lat, "wall": wall, "top1": top1, "failed": len(failures),
            "first_failure": failures[0] if failures else None, "others_cores": others / wall}


def measure(server: Server, client, one: tuple[str, bytes], images: list[tuple[str, bytes]], args) -> dict:
    """c=1 on the one image, then c=N on every image: the figures of one round."""
    for _ in range(3):
        server.post(client, *one)
    c1 = load(server, client, [one] * args.c1_requests, 1)
    load(server, client, [images[i % len(images)] for i in range(args.concurrency)], args.concurrency)
    cn = load(server, client, images, args.concurrency)
    ok = len(cn["latencies"])
    return {"ready_s": server.ready_s,
            "c1_p50_ms": 1000 * percentile(c1["latencies"], 50) if c1["latencies"] else None,
            "c1_p95_ms": 1000 * percentile(c1["latencies"], 95) if c1["latencies"] else None,
            "cn_img_s": ok / cn["wall"],
            "cn_p50_ms": 1000 * percentile(cn["latencies"], 50) if ok else None,
            "cn_p99_ms": 1000 * percentile(cn["latencies"], 99) if ok else None,
            "failed": c1["failed"] + cn["failed"], "first_failure": c1["first_failure"] or cn["first_failure"],
            "top1": cn["top1"], "others_cores": statistics.median([c1["others_cores"], cn["others_cores"]])}


# ---------------------------------------------------------------------------------------------- references

def reference_main(args) -> None:
    """(In a child process) the in-process figures: one image alone, the folder through resnet_cli.classify."""
    import resnet_cli

    t0 = time.perf_counter()
    clf = resnet_cli.Classifier(args.arch, args.weights)
    load_s = time.perf_counter() - t0
    for _ in range(3):
        clf(args.image)
    one = []
    for _ in range(args.c1_requests):
        t0 = time.perf_counter()
        clf(args.image)
        one.append(time.perf_counter() - t0)
    del clf
    t0 = time.perf_counter()
    top1 = {Path(r["path"]).name: r["topk"][0]["label"]
            for r in resnet_cli.classify(args.folder, arch=args.arch, weights=args.weights, quiet=True)}
    folder_s = time.perf_counter() - t0
    print(json.dumps({"one_s": one, "folder_s": folder_s, "load_s": load_s, "top1": top1}))


def references(args, ckpt: Path, image: Path, folder: Path) -> dict:
    """The in-process figures (a child process) and the command's whole-folder run, with the cores the rest of the
    machine used meanwhile."""
    import resource

    def children_s() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    busy0, kids0, own0, wall0 = busy_s(), children_s(), time.process_time(), time.perf_counter()
    out = subprocess.run([PY, __file__, "--_reference", "--arch", args.arch, "--weights", str(ckpt), "--image",
                          str(image), "--folder", str(folder), "--c1-requests", str(args.c1_requests)],
                         env=env_here(), cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the in-process reference failed:\n{out.stderr[-3000:]}")
    ref = json.loads(out.stdout.splitlines()[-1])
    n = len(ref["top1"])
    t0 = time.perf_counter()
    subprocess.run([PY, "-m", "resnet_cli", str(folder), "-a", args.arch, "-w", str(ckpt), "-q", "-f", "jsonl"],
                   env=env_here(), cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
    cli_s = time.perf_counter() - t0
    others = busy_s() - busy0 - (children_s() - kids0) - (time.process_time() - own0)
    return {"one_p50_ms": 1000 * percentile(ref["one_s"], 50), "one_p95_ms": 1000 * percentile(ref["one_s"], 95),
            "api_img_s": n / ref["folder_s"], "cli_img_s": n / cli_s, "load_s": ref["load_s"], "top1": ref["top1"],
            "others_cores": max(0.0, others) / (time.perf_counter() - wall0)}


# ---------------------------------------------------------------------------------------------- RSS

def rss_phase(args, work: Path, images: list[tuple[str, bytes]], client) -> dict:
    """Our server on a resnet18 checkpoint: --rss-requests requests, RSS sampled every --rss-every."""
    from checkpoints import make_checkpoint

    ckpt = work / f"{args.rss_arch}-seeded.pth"
    if not ckpt.exists():
        make_checkpoint(args.rss_arch, ckpt)
    server = Ours(work, args.rss_arch, ckpt)
    server.start(client)
    try:
        load(server, client, [images[i % len(images)] for i in range(args.concurrency)], args.concurrency)
        samples = [(0, server.rss_mb())]
        requests = [images[i % len(images)] for i in range(args.rss_requests)]
        def sample(n: int) -> None:
            samples.append((n, server.rss_mb()))
            print(f"  RSS after {n:6d} requests: {samples[-1][1]:7.1f} MB", file=sys.stderr, flush=True)

        res = load(server, client, requests, args.concurrency, every=args.rss_every, on_every=sample)
    finally:
        server.stop()
    mbs = [mb for _, mb in samples]
    return {"arch": args.rss_arch, "requests": args.rss_requests, "concurrency": args.concurrency,
            "failed": res["failed"], "img_s": len(res["latencies"]) / res["wall"],
            "first_mb": mbs[0], "last_mb": mbs[-1], "max_mb": max(mbs), "samples": samples}


# ---------------------------------------------------------------------------------------------- the table

def fmt(v, digits=1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(res: dict) -> str:
    a = res["args"]
    ref = res.get("reference")
    lines = [f"Machine: {res['machine']}; load average at start {res['load_start']}, at end {res['load_end']}."]
    if ref is None:  # --rounds 0: the RSS phase only
        return "\n".join(lines + [rss_line(res)] if res.get("rss") else lines) + "\n"
    lines += [f"Checkpoint: seeded {a['arch']} in torchvision's layout (tests/checkpoints.py); {res['images']} "
             f"JPEGs of 500x375 (benchmarks/images.py); c=1: one of them, {a['c1_requests']} requests; "
             f"c={a['concurrency']}: every image once. Medians of {a['rounds']} interleaved rounds (a measurement "
             f"during which the rest of the machine used more than {a['disturbed']} cores taken again, at most "
             f"{a['retries']} times).",
             "",
             f"| | c=1 p50 ms | c=1 p95 ms | c={a['concurrency']} img/s | c={a['concurrency']} p50 ms | "
             f"c={a['concurrency']} p99 ms | top-1 = classify | ready in s | others' load (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| in-process: decode + classify one image | {fmt(ref['one_p50_ms'])} | {fmt(ref['one_p95_ms'])} "
             f"| | | | | | {fmt(ref['others_cores'], 2)} |",
             f"| in-process: resnet_cli.classify(folder), loading the weights ({ref['load_s']:.1f} s) included "
             f"| | | {fmt(ref['api_img_s'])} | | | | | |",
             f"| `resnet-classify FOLDER`, whole process | | | {fmt(ref['cli_img_s'])} | | | | | |"]
    for key in SERVERS:
        if key not in res["servers"]:
            continue
        s = res["servers"][key]
        if "error" in s:
            lines.append(f"| {NAMES[key]} | not run: {s['error']} | | | | | | | |")
            continue
        failed = f" ({s['failed']} failed)" if s["failed"] else ""
        lines.append(f"| {NAMES[key]}{failed} | {fmt(s['c1_p50_ms'])} | {fmt(s['c1_p95_ms'])} | "
                     f"{fmt(s['cn_img_s'])} | {fmt(s['cn_p50_ms'])} | {fmt(s['cn_p99_ms'])} | "
                     f"{s['agree']}/{res['images']} | {fmt(s['ready_s'])} | {fmt(s['others_cores'], 2)} |")
    lines.append("")
    ours = res["servers"].get("ours", {})
    if "c1_p50_ms" in ours:
        lines.append(f"- c=1: serve's p50 / in-process one image = **{ours['c1_p50_ms'] / ref['one_p50_ms']:.2f}x** "
                     "(goal: at most 1.2x)")
        lines.append(f"- c={a['concurrency']}: serve's throughput / resnet_cli.classify(folder) in-process = "
                     f"**{ours['cn_img_s'] / ref['api_img_s']:.2f}x**; / the command, whole process = "
                     f"{ours['cn_img_s'] / ref['cli_img_s']:.2f}x (goal: at least 0.9x)")
        for key in ("litserve", "torchserve"):
            o = res["servers"].get(key, {})
            if "c1_p50_ms" in o:
                lines.append(f"- against {NAMES[key]}: c={a['concurrency']} throughput "
                             f"**{ours['cn_img_s'] / o['cn_img_s']:.2f}x** theirs; c=1 p50 "
                             f"**{ours['c1_p50_ms'] / o['c1_p50_ms']:.2f}x** theirs (below 1: ours faster)")
    if res.get("rss"):
        lines.append(rss_line(res))
    return "\n".join(lines) + "\n"


def rss_line(res: dict) -> str:
    r = res["rss"]
    return (f"- RSS of our server over {r['requests']:,} requests at c={r['concurrency']} ({r['arch']} checkpoint, "
            f"{r['img_s']:.1f} img/s, {r['failed']} failed): first {r['first_mb']:.0f} MB, last {r['last_mb']:.0f} MB, "
            f"max {r['max_mb']:.0f} MB (sampled every {res['args']['rss_every']} requests)")


def medians(rounds: list[dict], ref_top1: dict) -> dict:
    keys = ("ready_s", "c1_p50_ms", "c1_p95_ms", "cn_img_s", "cn_p50_ms", "cn_p99_ms", "others_cores")
    out = {k: statistics.median(r[k] for r in rounds if r[k] is not None) for k in keys
           if any(r[k] is not None for r in rounds)}
    out["failed"] = sum(r["failed"] for r in rounds)
    out["first_failure"] = next((r["first_failure"] for r in rounds if r["first_failure"]), None)
    out["agree"] = min(sum(r["top1"].get(n) == lbl for n, lbl in ref_top1.items()) for r in rounds)
    out["rounds"] = [{k: r[k] for k in (*keys, "attempts")} for r in rounds]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=None, help="default: resnet50 (--quick: resnet18)")
    ap.add_argument("--rounds", type=int, default=None, help="default: 3 (--quick: 1); 0: the RSS phase only")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: ours,litserve,torchserve")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--c1-requests", type=int, default=None,
                    help="requests of the c=1 latency, per round; default: 30 (--quick: 5)")
    ap.add_argument("--images", type=int, default=None,
                    help="images of the set, each posted once at c=N; default: 512 (--quick: 32)")
    ap.add_argument("--rss-requests", type=int, default=None,
                    help="default: 10,000 (--quick: 200); 0: no RSS phase")
    ap.add_argument("--rss-every", type=int, default=None, help="default: 500 (--quick: 50)")
    ap.add_argument("--rss-arch", default="resnet18")
    ap.add_argument("--retries", type=int, default=2,
                    help="take a disturbed measurement again, at most this often (default: 2)")
    ap.add_argument("--disturbed", type=float, default=0.1, metavar="CORES",
                    help="a measurement during which the rest of the machine used more than this many cores is "
                         "disturbed (default: 0.1)")
    ap.add_argument("--torchserve-bin", default=None,
                    help="the bin folder holding torchserve and torch-model-archiver (default: PATH)")
    ap.add_argument("--work", default=str(ROOT / "bench-out"), help="where images and checkpoints go")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: the smaller defaults (any option given still applies)")
    ap.add_argument("--output", default=None, help="also write the markdown table here")
    ap.add_argument("--json", default=None, help="also write every figure here")
    ap.add_argument("--_reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._reference:
        return reference_main(args)
    defaults = {"arch": ("resnet50", "resnet18"), "rounds": (3, 1), "c1_requests": (30, 5), "images": (512, 32),
                "rss_requests": (10_000, 200), "rss_every": (500, 50)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)

    import httpx
    from checkpoints import make_checkpoint
    from images import make_set

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{args.arch}-seeded.pth"
    if not ckpt.exists():
        make_checkpoint(args.arch, ckpt)
    folder = make_set("imagenet", work / ("imagenet" if args.images == 512 else f"imagenet{args.images}"),
                      args.images)
    paths = sorted(folder.glob("*.jpg"))
    images = [(p.name, p.read_bytes()) for p in paths]
    one = images[0]
    wanted = [s for s in args.servers.split(",") if s]
    unknown = set(wanted) - set(SERVERS)
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))} (choose from {', '.join(SERVERS)})")
    res: dict = {"machine": machine(), "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                 "images": len(images), "args": vars(args), "servers": {}}
    print(f"machine: {res['machine']}", file=sys.stderr)

    factories = {"ours": lambda: Ours(work, args.arch, ckpt),
                 "litserve": lambda: LitServe(work, args.arch, ckpt, args.concurrency),
                 "torchserve": lambda: TorchServe(work, args.arch, ckpt, args.concurrency, args.torchserve_bin)}
    per_server: dict[str, list[dict]] = {k: [] for k in wanted}
    errors: dict[str, str] = {}
    refs: list[dict] = []
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(limits=limits, timeout=httpx.Timeout(300.0)) as client:
        for rnd in range(args.rounds):
            order = ["reference", *wanted]
            shift = rnd % len(order)
            for key in order[shift:] + order[:shift]:
                t0 = time.perf_counter()
                for attempt in range(1 + args.retries):  # a disturbed measurement is taken again, in its place
                    t0 = time.perf_counter()
                    if key == "reference":
                        r = references(args, ckpt, paths[0], folder)
                        line = (f"in-process: one image p50 {r['one_p50_ms']:.1f} ms, classify(folder) "
                                f"{r['api_img_s']:.1f} img/s, command {r['cli_img_s']:.1f} img/s")
                    elif key in errors:
                        break
                    else:
                        try:
                            server = factories[key]()
                            server.start(client)
                        except Exception as exc:
                            errors[key] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                            print(f"  {NAMES[key]} cannot run: {exc}", file=sys.stderr, flush=True)
                            break
                        try:
                            r = measure(server, client, one, images, args)
                        finally:
                            server.stop()
                        line = (f"{NAMES[key]:22s} c=1 p50 {fmt(r['c1_p50_ms'])} ms  c={args.concurrency} "
                                f"{r['cn_img_s']:.1f} img/s p99 {fmt(r['cn_p99_ms'])} ms  failed {r['failed']}")
                    disturbed = r["others_cores"] > args.disturbed
                    print(f"  [round {rnd + 1}/{args.rounds}] {line}  others {r['others_cores']:.2f} cores  "
                          f"({time.perf_counter() - t0:.0f} s){'  DISTURBED' if disturbed else ''}",
                          file=sys.stderr, flush=True)
                    if not disturbed or attempt == args.retries:
                        r["attempts"] = attempt + 1
                        (refs if key == "reference" else per_server[key]).append(r)
                        break
        if refs:
            res["reference"] = {k: statistics.median(r[k] for r in refs)
                                for k in ("one_p50_ms", "one_p95_ms", "api_img_s", "cli_img_s", "load_s",
                                          "others_cores")}
            res["reference"]["rounds"] = [{k: v for k, v in r.items() if k != "top1"} for r in refs]
            for key in wanted:
                res["servers"][key] = ({"error": errors[key]} if key in errors
                                       else medians(per_server[key], refs[0]["top1"]))
        if args.rss_requests and "ours" in wanted:
            print(f"  RSS: {args.rss_requests} requests to our server ({args.rss_arch})", file=sys.stderr, flush=True)
            res["rss"] = rss_phase(args, work, images, client)
    res["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = table(res)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
