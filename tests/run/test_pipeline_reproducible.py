"""An answer depends on the input and the options only, to the byte: not on the batch an image lands in, its
batch mates, --batch-size, the output format or the engine (the Ray engine: tests/run/test_engines_ray.py)."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from PIL import Image

from checkpoints import PHOTOS


@pytest.fixture(scope="module")
def thirteen(tmp_path_factory):
    """The six sample photos and seven crops of them: 13 images, so batches of 8 leave a short one."""
    folder = tmp_path_factory.mktemp("thirteen")
    for p in PHOTOS:
        shutil.copy(p, folder / p.name)
    for i in range(7):
        img = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        img.crop((i * 9, i * 5, i * 9 + 180, i * 5 + 150)).save(folder / f"crop_{i}.jpg", quality=90)
    return folder


def lines(res) -> list[bytes]:
    assert res.code == 0, res.stderr
    return res.stdout.splitlines()


def test_an_image_alone_and_in_a_folder_of_13_gets_the_same_record_bytes(thirteen, checkpoint, cli):
    args = ("-a", "resnet50", "-w", checkpoint("resnet50"), "-f", "jsonl")
    folder = lines(cli(thirteen, *args))
    assert len(folder) == 13
    for i in (0, 5, 12):  # the first, one inside the first batch, the last of the short last batch
        path = json.loads(folder[i])["path"]
        [alone] = lines(cli(path, *args))
        assert alone == folder[i], path


@pytest.mark.parametrize("batch_size", ["1", "3", "13"])
def test_any_batch_size_gives_the_same_bytes(thirteen, checkpoint, cli, batch_size):
    args = ("-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
    assert lines(cli(thirteen, *args, "-b", batch_size)) == lines(cli(thirteen, *args))


def test_every_format_carries_the_same_numbers(thirteen, checkpoint, cli):
    args = (thirteen, "-a", "resnet18", "-w", checkpoint("resnet18"))
    records = [json.loads(line) for line in lines(cli(*args, "-f", "jsonl"))]
    as_json = cli(*args, "-f", "json")
    assert json.loads(as_json.stdout) == records  # floats compared exactly
    rows = list(csv.DictReader(io.StringIO(cli(*args, "-f", "csv").stdout.decode())))
    assert [(r["path"], int(r["index"]), float(r["probability"])) for r in rows] == \
        [(rec["path"], p["index"], p["probability"]) for rec in records for p in rec["topk"]]
