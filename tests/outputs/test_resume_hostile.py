"""--resume never mixes runs: the resumed file is byte for byte the file an uninterrupted run of the same command
writes, or the resume is refused (exit 2) and the earlier file is left byte for byte as it was. Repeated
inputs, another --topk, a checkpoint replaced at the same path, tampered records, byte-order marks, and outputs
that cannot be read back (a FIFO, a pipe)."""

from __future__ import annotations

import codecs
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from checkpoints import PHOTOS


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three small JPEGs a, b, c (the sample photos scaled down) and a truncated one, in a folder."""
    folder = tmp_path_factory.mktemp("d")
    for name, photo in zip("abc", PHOTOS):
        Image.open(photo).convert("RGB").resize((64, 48)).save(folder / f"{name}.jpg", quality=90)
    data = (folder / "a.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture
def r18(checkpoint):
    return ["-a", "resnet18", "-w", str(checkpoint("resnet18"))]


def refused(res, out, before: bytes, *words: str) -> None:
    assert res.code == 2, res.stderr
    assert "Traceback" not in res.stderr and "--resume" in res.stderr and str(out) in res.stderr, res.stderr
    for word in words:
        assert word in res.stderr, res.stderr
    assert out.read_bytes() == before


# --- 18.7: matched by place, not by a set of paths -------------------------------------------------------------

@pytest.mark.parametrize("ext, first, full", [
    ("jsonl", "ab", "aba"),  # the example: 2 records where 3 belong
    ("json", "ab", "aba"),
    ("csv", "aa", "aab"),  # a CSV with a repeated input used to be refused as not ours
    ("csv", "ab", "aba"),
    ("jsonl", "a", "aaa"),
    ("jsonl", "ba", "abab"),  # the earlier run listed them in another order
])
def test_repeated_inputs_resume_to_the_uninterrupted_file(small, tmp_path, r18, cli, ext, first, full):
    out, whole = tmp_path / f"out.{ext}", tmp_path / f"whole.{ext}"
    assert cli(*(small / f"{n}.jpg" for n in first), *r18, "-o", out).code == 0
    assert cli(*(small / f"{n}.jpg" for n in full), *r18, "-o", out, "--resume").code == 0
    assert cli(*(small / f"{n}.jpg" for n in full), *r18, "-o", whole).code == 0
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("cut", [3, 6, 9])  # within the first, second and third listing
def test_a_folder_listed_three_times_resumes_to_every_record(small, tmp_path, r18, cli, cut):
    """An interrupted run leaves a prefix of the records (the broken file's failure among them); resumed, the
    folder's records appear three times, the failure retried in each of its places."""
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    assert cli(small, small, small, *r18, "-o", whole).code == 1
    lines = whole.read_bytes().splitlines(keepends=True)
    assert len(lines) == 12
    out.write_bytes(b"".join(lines[:cut]))
    assert cli(small, small, small, *r18, "-o", out, "--resume").code == 1
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("first, then", [
    (["-k", "3"], []),  # a checkpoint's class count is read, not guessed from the file's top-3
    (["-k", "3"], ["-k", "4"]),
    ([], ["-k", "3"]),
])
def test_a_file_of_another_topk_is_refused(small, tmp_path, r18, cli, first, then):
    out = tmp_path / "out.jsonl"
    assert cli(small / "a.jpg", *r18, *first, "-o", out).code == 0
    before = out.read_bytes()
    refused(cli(small / "a.jpg", small / "b.jpg", *r18, *then, "-o", out, "--resume"), out, before, "top-")


def test_a_file_of_the_same_topk_resumes(small, tmp_path, r18, cli):
    out, whole = tmp_path / "out.csv", tmp_path / "whole.csv"
    assert cli(small / "a.jpg", *r18, "-k", "3", "-o", out).code == 0
    assert cli(small / "a.jpg", small / "b.jpg", *r18, "-k", "3", "-o", out, "--resume").code == 0
    assert cli(small / "a.jpg", small / "b.jpg", *r18, "-k", "3", "-o", whole).code == 0
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
@pytest.mark.parametrize("replacement", [
    {"seed": 1},  # the same architecture and class count: only what it computes tells
    {"num_classes": 10},  # another head: other labels
])
def test_a_checkpoint_replaced_at_the_same_path_is_refused(small, tmp_path, checkpoint, cli, ext, replacement):
    model = tmp_path / "model.pth"
    shutil.copy(checkpoint("resnet18"), model)
    args = ["-a", "resnet18", "-w", str(model)]
    out = tmp_path / f"out.{ext}"
    assert cli(small / "broken.jpg", small / "a.jpg", *args, "-o", out).code == 1  # a failure before the success
    before = out.read_bytes()
    shutil.copy(checkpoint("resnet18", **replacement), model)
    res = cli(small / "broken.jpg", small / "a.jpg", small / "b.jpg", *args, "-o", out, "--resume")
    refused(res, out, before)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_same_checkpoint_copied_again_to_its_path_resumes(small, tmp_path, checkpoint, cli):
    """The weights are identified by what they compute: a copy of the same file (a new modification time)
    resumes."""
    model = tmp_path / "model.pth"
    shutil.copy(checkpoint("resnet18"), model)
    args = ["-a", "resnet18", "-w", str(model)]
    out, whole = tmp_path / "out.jsonl", tmp_path / "whole.jsonl"
    assert cli(small / "a.jpg", *args, "-o", out).code == 0
    model.unlink()
    shutil.copy(checkpoint("resnet18"), model)
    assert cli(small / "a.jpg", small / "b.jpg", *args, "-o", out, "--resume").code == 0
    assert cli(small / "a.jpg", small / "b.jpg", *args, "-o", whole).code == 0
    assert out.read_bytes() == whole.read_bytes()


def test_a_resumed_run_stopped_before_its_check_leaves_the_file(small, tmp_path, r18, cli, monkeypatch):
    """The file's first success is classified again to check the weights; a run stopped before that (here an
    engine that answers the retried failure with another model's result, then is interrupted) leaves the
    earlier file as it was rather than write new results beside unchecked old ones."""
    from resnet_cli.run import engines
    from resnet_cli.core.records import Prediction, Success

    out = tmp_path / "out.jsonl"
    assert cli(small / "broken.jpg", small / "a.jpg", *r18, "-o", out).code == 1
    before = out.read_bytes()

    def interrupted_engine(job, stop):
        for src in job.inputs:
            yield Success(src.path, "resnet18", job.weights.name, 256, 224,
                          tuple(Prediction(r, r, f"other {r}", 0.1) for r in range(1, 6)))
            signal.raise_signal(signal.SIGINT)
            if stop.is_set():
                return

    monkeypatch.setattr(engines, "records", interrupted_engine)
    res = cli(small / "broken.jpg", small / "a.jpg", *r18, "-o", out, "--resume")
    assert res.code == 130, res.stderr
    assert out.read_bytes() == before
    assert "left as it was" in res.stderr


def test_a_file_whose_inputs_this_run_does_not_list_is_refused(small, tmp_path, r18, cli):
    out = tmp_path / "out.jsonl"
    assert cli(small / "a.jpg", *r18, "-o", out).code == 0
    before = out.read_bytes()
    refused(cli(small / "b.jpg", small / "c.jpg", *r18, "-o", out, "--resume"), out, before, "none of the 1")


# --- 18.7 and 17.B12: every kept record checked against the schema ---------------------------------------------

def _top(d, **change):
    d["topk"][0].update(change)


TAMPERED = {  # name: (change to the first record's dict, the field the message names)
    "huge index": (lambda d: _top(d, index=10**30), "index"),
    "negative index": (lambda d: _top(d, index=-1), "index"),
    "index of another class": (lambda d: _top(d, index=(d["topk"][0]["index"] + 1) % 1000), ""),
    "float index": (lambda d: _top(d, index=float(d["topk"][0]["index"])), "index"),
    "probability as text": (lambda d: _top(d, probability="high"), "probability"),
    "probability above 1": (lambda d: _top(d, probability=1.5), "probability"),
    "negative probability": (lambda d: _top(d, probability=-0.25), "probability"),
    "probability as an integer": (lambda d: _top(d, probability=1), "probability"),
    "probabilities out of order": (lambda d: d["topk"][-1].update(probability=d["topk"][0]["probability"] + 1e-3),
                                   "probability"),
    "rank 2 first": (lambda d: _top(d, rank=2), "rank"),
    "rank true": (lambda d: _top(d, rank=True), "rank"),
    "label": (lambda d: _top(d, label="something else"), "something else"),
    "path a list": (lambda d: d.update(path=["a.jpg"]), "path"),
    "path a number": (lambda d: d.update(path=7), "path"),
    "path missing": (lambda d: d.pop("path"), "path"),
    "topk not a list": (lambda d: d.update(topk={"rank": 1}), "topk"),
    "topk entry not an object": (lambda d: d["topk"].__setitem__(0, 3), "topk"),
    "resize as text": (lambda d: d["preprocess"].update(resize="256"), "resize"),
    "preprocess missing": (lambda d: d.pop("preprocess"), "preprocess"),
    "an extra field": (lambda d: d.update(extra=1), "fields"),
    "error not an object": (lambda d: d.clear() or d.update(path="x.jpg", error="bad"), "error"),
    "error type missing": (lambda d: d.clear() or d.update(path="x.jpg", error={"message": "m"}), "type"),
    "an empty object": (lambda d: d.clear(), "path"),
}


@pytest.fixture(scope="module")
def finished(small, checkpoint, tmp_path_factory) -> bytes:
    """A finished run's records of a and b, as JSON Lines."""
    from resnet_cli.cli import run

    out = tmp_path_factory.mktemp("finished") / "out.jsonl"
    assert run([str(small / "a.jpg"), str(small / "b.jpg"), "-a", "resnet18", "-w", str(checkpoint("resnet18")),
                "-o", str(out), "-q"]) == 0
    return out.read_bytes()


@pytest.fixture
def records_file(finished, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(finished)
    return out


@pytest.mark.parametrize("ext", ["jsonl", "json"])
@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_tampered_record_is_refused_naming_the_file_and_field(records_file, small, tmp_path, r18, cli, ext,
                                                               name):
    change, field = TAMPERED[name]
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    change(records[0])
    out = tmp_path / f"tampered.{ext}"
    if ext == "jsonl":
        out.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        out.write_text(json.dumps(records))
    before = out.read_bytes()
    refused(cli(small / "a.jpg", small / "b.jpg", small / "c.jpg", *r18, "-o", out, "--resume"), out, before,
            field)


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_non_finite_probability_is_refused(records_file, small, r18, cli, raw):
    line, rest = records_file.read_bytes().split(b"\n", 1)
    d = json.loads(line)
    old = json.dumps(d["topk"][0]["probability"]).encode()
    records_file.write_bytes(line.replace(old, raw, 1) + b"\n" + rest)
    before = records_file.read_bytes()
    assert not math.isfinite(json.loads(before.split(b"\n")[0])["topk"][0]["probability"])
    refused(cli(small / "a.jpg", small / "b.jpg", *r18, "-o", records_file, "--resume"), records_file, before,
            "probability")


@pytest.mark.parametrize("column, value", [
    ("probability", "high"),
    ("probability", "nan"),
    ("index", str(10**30)),
    ("index", " 3"),  # not as this tool writes it
    ("rank", "2"),
    ("label", "something else"),
    ("resize", "256.0"),
])
def test_a_tampered_csv_row_is_refused(records_file, small, tmp_path, r18, cli, column, value):
    import csv
    import io

    from resnet_cli.core.records import from_dict
    from resnet_cli.outputs.writers import CsvWriter

    written = io.BytesIO()  # the run's records as the tool writes them in CSV
    writer = CsvWriter(written)
    for line in records_file.read_text().splitlines():
        writer.write(from_dict(json.loads(line)))
    rows = list(csv.reader(io.StringIO(written.getvalue().decode(), newline="")))
    rows[1][rows[0].index(column)] = value
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    out = tmp_path / "out.csv"
    out.write_text(buf.getvalue())
    before = out.read_bytes()
    refused(cli(small / "a.jpg", small / "b.jpg", small / "c.jpg", *r18, "-o", out, "--resume"), out, before)


# --- 18.4: a byte-order mark ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["jsonl", "json", "csv"])
def test_a_byte_order_mark_before_a_resume_file_is_ignored(small, tmp_path, r18, cli, ext):
    out, whole = tmp_path / f"out.{ext}", tmp_path / f"whole.{ext}"
    assert cli(small / "a.jpg", *r18, "-o", out).code == 0
    out.write_bytes(codecs.BOM_UTF8 + out.read_bytes())  # as a Windows editor saves it
    assert cli(small / "a.jpg", small / "b.jpg", *r18, "-o", out, "--resume").code == 0
    assert cli(small / "a.jpg", small / "b.jpg", *r18, "-o", whole).code == 0
    assert out.read_bytes() == whole.read_bytes()


# --- 17.B13: nothing that would wait forever -------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_resume_refuses_what_is_not_a_regular_file_without_reading_it(small, tmp_path, r18, cli, kind):
    if kind == "fifo":
        out = tmp_path / "out.jsonl"
        os.mkfifo(out)
    else:
        out = "/dev/null"
    res = cli(small / "a.jpg", *r18, "-o", out, "--resume")
    assert res.code == 2 and "not a regular file" in res.stderr and str(out) in res.stderr, res.stderr


@pytest.mark.timeout(60)
def test_resume_into_dev_stdout_piped_is_refused_at_once(small, r18, tmp_path):
    import resnet_cli

    env = {**os.environ, "PYTHONPATH": str(Path(resnet_cli.__file__).parent.parent)}  # the package under test
    proc = subprocess.run([sys.executable, "-m", "resnet_cli", str(small / "a.jpg"), *r18, "-o", "/dev/stdout",
                           "--resume"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=50)
    assert proc.returncode == 2 and b"not a regular file" in proc.stderr, proc.stderr
    assert proc.stdout == b""
