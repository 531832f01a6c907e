"""--engine ray beyond the happy path, through the real command: an interrupted run resumed, and a real
two-node cluster reached with --ray-address. Every address is on the loopback range."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from checkpoints import PHOTOS, ROOT

pytestmark = pytest.mark.ray

RAY = str(Path(sys.executable).parent / "ray")
# No token files in the user's home, no usage reporting: a private test cluster
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def cli(*argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resnet_cli", *map(str, argv)], cwd=ROOT, env=RAY_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, bytes, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err.decode(errors="replace")


@pytest.fixture(scope="module")
def eighty(tmp_path_factory) -> Path:
    """80 small JPEGs (crops of the sample photos) and a truncated one early on, inside any interrupted prefix."""
    folder = tmp_path_factory.mktemp("eighty")
    base = [Image.open(p).convert("RGB") for p in PHOTOS]
    for i in range(79):
        img = base[i % len(base)]
        x, y = (i * 7) % (img.width - 96), (i * 13) % (img.height - 72)
        img.crop((x, y, x + 96, y + 72)).save(folder / f"img_{i:03d}.jpg", quality=85)
    data = (folder / "img_000.jpg").read_bytes()
    (folder / "img_002_broken.jpg").write_bytes(data[: len(data) // 2])
    return folder


@pytest.mark.timeout(600, method="thread")  # a hung Ray call ignores SIGALRM
def test_ray_run_interrupted_and_resumed_equals_an_uninterrupted_local_run(eighty, checkpoint, tmp_path):
    ckpt = checkpoint("resnet50")  # slow enough on two single-threaded actors for the signal to land mid-run
    args = [eighty, "-a", "resnet50", "-w", ckpt, "-b", "4"]
    out = tmp_path / "ray.jsonl"
    proc = cli(*args, "--engine", "ray", "--workers", "2", "-o", out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 12:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert "interrupted:" in err and "--resume" in err
    done = out.read_bytes().count(b"\n")
    assert 12 <= done < 80, "the signal should land mid-run"

    code, _, err = finish(cli(*args, "--engine", "ray", "--workers", "2", "-o", out, "--resume"))
    assert code == 1, err  # the truncated file fails again, in its place
    whole = tmp_path / "local.jsonl"
    code, _, err = finish(cli(*args, "-o", whole))
    assert code == 1, err
    assert out.read_bytes() == whole.read_bytes()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """`ray start --head` and a second `ray start --address`, one CPU each, on two loopback addresses (Ray
    would advertise the machine's own address for 127.0.0.1), stopped at the end."""
    head_ip, worker_ip = "127.0.0.2", "127.0.0.3"
    port = _free_port(head_ip)
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", "--node-ip-address", head_ip, "--port", str(port),
                        "--include-dashboard", "false", *common], env=RAY_ENV, check=True, capture_output=True,
                       timeout=120)
        subprocess.run([RAY, "start", "--address", f"{head_ip}:{port}", "--node-ip-address", worker_ip, *common],
                       env=RAY_ENV, check=True, capture_output=True, timeout=120)
        yield f"{head_ip}:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=RAY_ENV, capture_output=True, timeout=120)


@pytest.mark.timeout(600, method="thread")  # a hung Ray call ignores SIGALRM
def test_a_two_node_cluster_reached_with_ray_address_gives_the_local_records(two_node_cluster, checkpoint,
                                                                             tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in PHOTOS:
        shutil.copy(p, folder / p.name)
    (folder / "notes.jpg").write_text("not a picture\n")
    args = [folder, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl", "-b", "2"]
    code, ray_out, err = finish(cli(*args, "--engine", "ray", "--ray-address", two_node_cluster))
    assert code == 1, err
    code, local_out, err = finish(cli(*args))
    assert code == 1, err
    assert ray_out == local_out
    records = [json.loads(line) for line in ray_out.splitlines()]
    assert len(records) == len(PHOTOS) + 1 and records[len(PHOTOS) - 1]["error"]["type"] == "not_an_image"
    # both nodes took part: the cluster the command reached is the two-node one
    import ray

    ray.init(address=two_node_cluster, log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    finally:
        ray.shutdown()


@pytest.mark.timeout(600, method="thread")  # a hung Ray call ignores SIGALRM
def test_serve_on_ray_serve_across_the_cluster_answers_as_classify(two_node_cluster, checkpoint, tmp_path):
    """`serve --engine ray --replicas 2` on the two-node cluster (one CPU each, a replica needs one: one replica on
    each node): every answer is classify's line, byte for byte; SIGTERM ends it with exit code 0."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    ckpt = checkpoint("resnet18")
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture\n")
    files = [*PHOTOS, notes]
    code, local_out, err = finish(cli(*files, "-a", "resnet18", "-w", ckpt, "-f", "jsonl"))
    assert code == 1, err
    expected = dict(zip(map(str, files), local_out.splitlines(keepends=True)))
    port = _free_port("127.0.0.1")
    proc = cli("serve", "--engine", "ray", "--ray-address", two_node_cluster, "--replicas", "2", "-a", "resnet18",
               "-w", ckpt, "--port", port)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.decode(errors="replace") for line in proc.stderr),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("serving" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"

        def post(path: str) -> tuple[str, httpx.Response]:
            data = open(path, "rb").read()
            return path, httpx.post(url + "/v1/classify", content=data, timeout=120,
                                    headers={"Content-Type": "application/octet-stream", "X-Filename": path})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, list(expected) * 2))
        for path, r in answers:
            assert r.content == expected[path], path
            assert r.status_code == (422 if path == str(notes) else 200)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
