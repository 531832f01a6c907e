"""Nothing is lost: interrupted runs keep every finished result, --resume completes them, files are atomic."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from checkpoints import PHOTOS, ROOT

N_IMAGES = 300
BROKEN = "img_0008_broken.jpg"  # sorts 10th


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """300 small JPEGs (crops of the sample photos) and one truncated file among the first ten, so that it
    falls inside any interrupted prefix and --resume really retries a failure."""
    folder = tmp_path_factory.mktemp("many")
    base = [Image.open(p).convert("RGB") for p in PHOTOS]
    for i in range(N_IMAGES - 1):
        img = base[i % len(base)]
        x, y = (i * 7) % (img.width - 96), (i * 13) % (img.height - 72)
        img.crop((x, y, x + 96, y + 72)).save(folder / f"img_{i:04d}.jpg", quality=85)
    data = (folder / "img_0000.jpg").read_bytes()
    (folder / BROKEN).write_bytes(data[: len(data) // 2])
    return folder


def start(folder: Path, out: Path, ckpt: Path, *extra: str, arch: str = "resnet18") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "resnet_cli", str(folder), "-a", arch, "-w", str(ckpt), "-o", str(out),
           "-b", "4", "--workers", "1", "-q", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_lines(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run wrote fewer than {n} lines (exit {proc.poll()})")


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_bytes().splitlines()]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.timeout(540)
def test_interrupt_then_resume_gives_the_uninterrupted_file_byte_for_byte(many, checkpoint, tmp_path, sig, code):
    ckpt = checkpoint("resnet18")
    whole = tmp_path / "whole.jsonl"
    proc = start(many, whole, ckpt, "-f", "jsonl")
    assert proc.wait(timeout=300) == 1  # the broken file fails
    out = tmp_path / "preds.jsonl"
    proc = start(many, out, ckpt, "-f", "jsonl")
    wait_for_lines(out, 24, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err
    assert b"stopping after the images in progress" in err
    assert b"records written to " + bytes(out) + b"; add --resume" in err
    first = records(out)  # every line is complete JSON
    assert 24 <= len(first) < N_IMAGES, "the run should have been stopped mid-way"
    names = sorted(p.name for p in many.iterdir())
    assert [Path(r["path"]).name for r in first] == names[: len(first)]  # a prefix, in order, no gap
    assert first[names.index(BROKEN)]["error"]["type"] == "truncated"  # the failure is inside the prefix
    # a hard kill's torn line at the end
    with out.open("ab") as f:
        f.write(b'{"path": "' + str(many / "img_0290.jpg").encode() + b'", "arch": "res')

    proc = start(many, out, ckpt, "-f", "jsonl", "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err.decode()  # the broken file is retried and fails again, in its place
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.timeout(300)
def test_resume_retries_a_failure_inside_the_interrupted_prefix(many, checkpoint, tmp_path):
    """The proof that a failure is retried, not copied: mend the file between the runs and it is classified."""
    folder = tmp_path / "many"
    shutil.copytree(many, folder)
    ckpt = checkpoint("resnet18")
    out = tmp_path / "preds.jsonl"
    proc = start(folder, out, ckpt, "-f", "jsonl")
    wait_for_lines(out, 24, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "error" in records(out)[sorted(os.listdir(folder)).index(BROKEN)]
    shutil.copy(folder / "img_0000.jpg", folder / BROKEN)  # mended
    proc = start(folder, out, ckpt, "-f", "jsonl", "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    final = records(out)
    assert [Path(r["path"]).name for r in final] == sorted(os.listdir(folder))
    assert all("topk" in r for r in final)


@pytest.mark.timeout(240)
def test_json_output_appears_atomically_and_holds_finished_results_after_an_interrupt(many, checkpoint, tmp_path):
    ckpt = checkpoint("resnet50")  # slower, so the interrupt lands mid-run
    out = tmp_path / "preds.json"
    out.write_text("previous results\n")
    proc = start(many, out, ckpt, "-f", "json", arch="resnet50")
    written = 0
    deadline = time.monotonic() + 120
    while written < 5 and time.monotonic() < deadline and proc.poll() is None:
        # Results stream into a temporary file beside the target; the target keeps its old content.
        assert out.read_text() == "previous results\n"
        tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".preds.json.")]
        written = tmp[0].read_bytes().count(b"\n") if tmp else 0
        time.sleep(0.02)
    assert written >= 5, "the run never got going"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    data = json.loads(out.read_text())
    assert 0 < len(data) < N_IMAGES
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temporary file left behind


@pytest.mark.timeout(180)
@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)])
def test_a_second_signal_ends_a_long_forward_pass_at_once(many, checkpoint, tmp_path, first, second):
    """The first signal lets the batch in progress finish (seconds, for resnet152 and 64 images); the second,
    sent once the first has been seen, ends the run within 2 s, with complete lines and its own exit code."""
    out = tmp_path / "preds.jsonl"
    proc = start(many, out, checkpoint("resnet152"), "-f", "jsonl", "-b", "64", arch="resnet152")
    wait_for_lines(out, 64, proc, timeout=150)  # the first batch is out: the second one is being computed
    proc.send_signal(first)
    seen = b""
    deadline = time.monotonic() + 10
    while b"stopping after" not in seen and time.monotonic() < deadline:  # the run says it saw the signal
        seen += os.read(proc.stderr.fileno(), 4096)
    assert b"stopping after" in seen, seen
    assert proc.poll() is None, "the batch in progress should still be running"
    t0 = time.monotonic()
    proc.send_signal(second)
    _, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    err = seen + err
    assert elapsed < 2.0, f"{elapsed:.2f} s after the second signal"
    assert proc.returncode == 128 + first, err.decode()  # the exit code of the signal that stopped the run
    assert b"resnet-classify: interrupted" in err and b"Traceback" not in err
    assert 64 <= len(records(out)) < N_IMAGES  # every line complete JSON
