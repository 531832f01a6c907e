"""Output targets that are not regular files (a FIFO, /dev/stdout) are written into, never replaced."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from checkpoints import PHOTOS, ROOT


@pytest.mark.timeout(120)
def test_a_fifo_output_is_written_into_and_stays_a_fifo(tmp_path, checkpoint):
    fifo = tmp_path / "results.json"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    res = subprocess.run([sys.executable, "-m", "resnet_cli", str(PHOTOS[0]), "-a", "resnet18", "-w",
                          str(checkpoint("resnet18")), "-o", str(fifo)], cwd=ROOT, capture_output=True, timeout=90)
    reader.join(timeout=30)
    assert res.returncode == 0, res.stderr
    assert [r["path"] for r in json.loads(got[0])] == [str(PHOTOS[0])]  # .json: the json format, streamed in
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no temporary file beside it


@pytest.mark.timeout(120)
def test_dev_stdout_as_output(checkpoint):
    res = subprocess.run([sys.executable, "-m", "resnet_cli", str(PHOTOS[0]), "-a", "resnet18", "-w",
                          str(checkpoint("resnet18")), "-o", "/dev/stdout", "-f", "csv"], cwd=ROOT,
                         capture_output=True, timeout=90)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert lines[0].startswith("path,arch,weights") and len(lines) == 1 + 5
