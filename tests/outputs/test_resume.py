"""--resume keeps what is finished and never destroys a file: whatever it refuses stays byte for byte as it was;
only a torn last line after at least one record of this tool is repaired."""

from __future__ import annotations

import json

import pytest

from checkpoints import PHOTOS


@pytest.fixture
def r18(checkpoint):
    return ["-a", "resnet18", "-w", str(checkpoint("resnet18"))]


@pytest.mark.parametrize("content", [
    b'{"note": "not a record"}',  # one line, no trailing newline: looks torn, is not ours
    b"plain text, no newline",
    b'{"path": "x.jpg", "arch": "res',  # a torn line alone: nothing of ours before it
    b"precious line 1\nprecious line 2\n",
])
def test_a_file_resume_refuses_is_left_byte_for_byte(tmp_path, r18, cli, content):
    out = tmp_path / "results.jsonl"
    out.write_bytes(content)
    res = cli(PHOTOS[0], *r18, "-o", out, "--resume")
    assert res.code == 2 and "--resume" in res.stderr and str(out) in res.stderr
    assert out.read_bytes() == content


def test_a_torn_last_line_after_our_records_is_repaired(tmp_path, r18, cli):
    out = tmp_path / "results.jsonl"
    assert cli(PHOTOS[0], *r18, "-o", out).code == 0
    first = out.read_bytes()
    out.write_bytes(first + b'{"path": "' + str(PHOTOS[1]).encode() + b'", "ar')
    assert cli(PHOTOS[0], PHOTOS[1], *r18, "-o", out, "--resume").code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    assert lines[0] == first and [json.loads(line)["path"] for line in lines] == [str(PHOTOS[0]), str(PHOTOS[1])]


@pytest.mark.parametrize("change", [
    ["-a", "resnet34"],  # another architecture (its own checkpoint below)
    ["-w", "other"],  # other weights
    ["-k", "3"],
    ["--crop", "192"],
    ["--resize", "288"],
])
def test_resume_refuses_results_of_other_options_and_leaves_the_file(tmp_path, checkpoint, cli, change):
    out = tmp_path / "results.jsonl"
    base = ["-a", "resnet18", "-w", str(checkpoint("resnet18"))]
    assert cli(PHOTOS[0], *base, "-o", out).code == 0
    before = out.read_bytes()
    if change[0] == "-a":
        args = ["-a", "resnet34", "-w", str(checkpoint("resnet34"))]
    elif change[0] == "-w":
        args = ["-a", "resnet18", "-w", str(checkpoint("resnet18", seed=1))]
    else:
        args = base + change
    res = cli(PHOTOS[0], PHOTOS[1], *args, "-o", out, "--resume")
    assert res.code == 2 and "--resume" in res.stderr
    assert out.read_bytes() == before


@pytest.mark.parametrize("ext", ["json", "csv", "jsonl"])
def test_resume_continues_json_csv_and_jsonl_outputs(tmp_path, r18, cli, ext):
    out = tmp_path / f"results.{ext}"
    whole = tmp_path / f"whole.{ext}"
    assert cli(*PHOTOS[:3], *r18, "-o", out).code == 0
    assert cli(*PHOTOS, *r18, "-o", out, "--resume").code == 0
    assert cli(*PHOTOS, *r18, "-o", whole).code == 0
    assert out.read_bytes() == whole.read_bytes()  # as if never interrupted


@pytest.mark.parametrize("ext", ["json", "csv", "jsonl"])
def test_a_failed_run_leaves_an_earlier_output_untouched(tmp_path, checkpoint, cli, ext):
    out = tmp_path / f"results.{ext}"
    out.write_bytes(b"an earlier run's results\n")
    # a checkpoint that does not fit the architecture: found once the run has started (decoding included)
    res = cli(*PHOTOS, "-a", "resnet50", "-w", checkpoint("resnet18"), "-o", out)
    assert res.code == 2 and "does not fit resnet50" in res.stderr
    assert out.read_bytes() == b"an earlier run's results\n"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
