"""Nothing is lost: interrupted runs keep every finished result, --resume completes them, files are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from checkpoints import PHOTOS, ROOT

N_IMAGES = 300


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """300 small JPEGs (crops of the sample photos) and one truncated file among them."""
    folder = tmp_path_factory.mktemp("many")
    base = [Image.open(p).convert("RGB") for p in PHOTOS]
    for i in range(N_IMAGES - 1):
        img = base[i % len(base)]
        x, y = (i * 7) % (img.width - 96), (i * 13) % (img.height - 72)
        img.crop((x, y, x + 96, y + 72)).save(folder / f"img_{i:04d}.jpg", quality=85)
    data = (folder / "img_0000.jpg").read_bytes()
    (folder / "img_0150_broken.jpg").write_bytes(data[: len(data) // 2])
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
def test_interrupt_then_resume_classifies_every_input_exactly_once(many, checkpoint, tmp_path, sig, code):
    ckpt = checkpoint("resnet18")
    out = tmp_path / "preds.jsonl"
    proc = start(many, out, ckpt, "-f", "jsonl")
    wait_for_lines(out, 24, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err
    first = records(out)  # every line is complete JSON
    assert 24 <= len(first) < N_IMAGES, "the run should have been stopped mid-way"
    names = sorted(p.name for p in many.iterdir())
    assert [Path(r["path"]).name for r in first] == names[: len(first)]  # a prefix, in order, no gap

    with out.open("ab") as f:
        f.write(b'{"path": "' + str(many / "img_0290.jpg").encode() + b'", "arch": "res')  # a hard kill's torn line

    proc = start(many, out, ckpt, "-f", "jsonl", "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err.decode()  # the broken file still fails
    final = records(out)
    paths = [Path(r["path"]).name for r in final]
    assert sorted(paths) == names and len(paths) == len(set(paths)) == N_IMAGES
    assert [r["path"] for r in final[: len(first)] if "topk" in r] == \
           [r["path"] for r in first if "topk" in r][: len(first)]  # earlier successes kept as they were
    broken = [r for r in final if "error" in r]
    assert [Path(r["path"]).name for r in broken] == ["img_0150_broken.jpg"]


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


def test_a_second_signal_ends_the_run_at_once_with_complete_lines(many, checkpoint, tmp_path):
    out = tmp_path / "preds.jsonl"
    proc = start(many, out, checkpoint("resnet18"), "-f", "jsonl")
    wait_for_lines(out, 8, proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err.decode()
    assert b"Traceback" not in err
    assert len(records(out)) < N_IMAGES  # every line complete JSON


def test_resume_refuses_a_file_it_did_not_write_and_leaves_it_alone(checkpoint, tmp_path):
    from resnet_cli.cli import run

    notes = tmp_path / "notes.log"
    notes.write_text("precious line 1\nprecious line 2\n")
    code = run([str(PHOTOS[0]), "-a", "resnet18", "-w", str(checkpoint("resnet18")), "-o", str(notes), "--resume"])
    assert code == 2
    assert notes.read_text() == "precious line 1\nprecious line 2\n"


def test_resume_refuses_to_mix_another_preprocessing_or_topk(checkpoint, tmp_path):
    from resnet_cli.cli import run

    out = tmp_path / "p.jsonl"
    args = [str(PHOTOS[0]), "-a", "resnet18", "-w", str(checkpoint("resnet18")), "-o", str(out)]
    assert run(args) == 0
    before = out.read_bytes()
    assert run([*args, "--resume", "--crop", "192"]) == 2
    assert run([*args, "--resume", "-k", "3"]) == 2
    assert out.read_bytes() == before
    assert run([*args, str(PHOTOS[1]), "--resume"]) == 0
    assert len(records(out)) == 2
