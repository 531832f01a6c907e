"""Outputs never destroy what they should not: no output is an input or another output of the run, every output
location is checked before anything is read, the files the tool names are never written through a symlink and
are cut to names the file system takes, every output gets a plain new file's permissions, and a CSV cell never
becomes a live spreadsheet formula (yet --resume reads it back exactly)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from PIL import Image



def small_png(path: Path, colour=(200, 40, 40)) -> Path:
    Image.new("RGB", (48, 40), colour).save(path)
    return path


@pytest.fixture
def r18(checkpoint):
    return ["-a", "resnet18", "-w", str(checkpoint("resnet18"))]


@pytest.fixture
def pics(tmp_path) -> Path:
    folder = tmp_path / "pics"
    folder.mkdir()
    small_png(folder / "a.png")
    small_png(folder / "b.png", (20, 90, 200))
    return folder


@pytest.fixture
def data(tmp_path) -> Path:
    """A labelled folder: classes 0 and 1 (ImageNet indices), two small images each."""
    root = tmp_path / "data"
    for label, colour in (("0", (200, 40, 40)), ("1", (20, 90, 200))):
        (root / label).mkdir(parents=True)
        for i in range(2):
            small_png(root / label / f"{i}.png", tuple(c + 10 * i for c in colour))
    return root


def snapshot(*folders: Path) -> dict:
    """Every file under the folders, with its bytes (symlinks by their target)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[p] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
    return out


def refused(res, *words) -> None:
    assert res.code == 2, res.stderr
    assert "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert line.startswith("resnet-classify: error:") and "\n" not in line, line
    for w in words:
        assert str(w) in line, line


# ---- an output that is an input, or another output ----------------------------------------------------------

@pytest.mark.parametrize("case", ["same", "dot-slash", "hard link", "symlink", "folder image", "glob",
                                  "checkpoint", "labels"])
def test_an_output_that_is_an_input_is_refused_before_anything_is_read(case, pics, r18, cli, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(pics)
    a, b = "a.png", "b.png"
    args = [a, b, *r18]
    if case == "same":  # `resnet-classify -o *.png`: the shell made the first PNG -o's value
        argv, option, named = ["-o", a, *args], "--output", a
    elif case == "dot-slash":
        argv, option, named = ["-o", "./b.png", *args], "--output", "./b.png"
    elif case == "hard link":
        os.link(a, tmp_path / "linked.png")
        argv, option, named = ["-o", tmp_path / "linked.png", *args], "--output", "linked.png"
    elif case == "symlink":
        os.symlink(pics / b, tmp_path / "pointer.json")
        argv, option, named = ["-o", tmp_path / "pointer.json", *args], "--output", "pointer.json"
    elif case == "folder image":  # a new image-named output in an input folder would be listed as an input
        argv, option, named = [pics, *r18, "-o", pics / "new.png"], "--output", "new.png"
    elif case == "glob":
        argv, option, named = [str(pics / "*.png"), *r18, "-o", pics / "b.png"], "--output", "b.png"
    elif case == "checkpoint":  # a copy: the old code overwrote it
        shutil.copy(r18[3], tmp_path / "model.pth")
        argv, option, named = [a, "-a", "resnet18", "-w", tmp_path / "model.pth", "-o", tmp_path / "model.pth"], \
            "--output", "model.pth"
    else:
        (pics / "labels.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
        argv, option, named = [a, *r18, "--labels", "labels.txt", "-o", "labels.txt"], "--output", "labels.txt"
    before = snapshot(pics, tmp_path)
    res = cli(*argv)
    refused(res, option, named, "input")
    assert snapshot(pics, tmp_path) == before
    assert res.stdout == b""


@pytest.mark.parametrize("first, second", [
    (("-o", "x.html"), ("--report", "x.html")),
    (("-o", "./x.html"), ("--report", "x.html")),
    (("-o", "sub/../x.html"), ("--report", "x.html")),
])
def test_two_outputs_that_are_one_file_are_refused(first, second, pics, r18, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    res = cli(pics / "a.png", *r18, *first, *second)
    refused(res, "same file", first[0], second[0])
    assert not (tmp_path / "x.html").exists()


def test_an_existing_output_reached_by_a_hard_link_is_one_file(pics, r18, cli, tmp_path):
    (tmp_path / "x.html").write_text("an earlier page")
    os.link(tmp_path / "x.html", tmp_path / "twin.html")
    res = cli(pics / "a.png", *r18, "-o", tmp_path / "twin.html", "--report", tmp_path / "x.html")
    refused(res, "same file")
    assert (tmp_path / "x.html").read_text() == "an earlier page"


def test_outputs_beside_the_inputs_that_are_not_read_back_are_allowed(pics, r18, cli):
    res = cli(pics, *r18, "-o", pics / "results.jsonl", "--report", pics / "page.html")
    assert res.code == 0, res.stderr
    assert [r["path"] for r in map(json.loads, (pics / "results.jsonl").read_text().splitlines())] == [
        str(pics / "a.png"), str(pics / "b.png")]


@pytest.mark.parametrize("case", ["out is the input folder", "out below a recursive input",
                                  "an input overlay could replace", "an input map could replace",
                                  "-o in --out", "-o is --out"])
def test_explain_never_writes_over_its_inputs(case, pics, r18, cli, tmp_path):
    args = [*r18]
    if case == "out is the input folder":  # `explain photos/ --out photos/`
        args += [pics, "--out", str(pics) + "/"]
    elif case == "out below a recursive input":  # a later run would explain the overlays
        args += [tmp_path, "-r", "--out", pics / "explained"]
    elif case == "an input overlay could replace":  # a.png's overlay is a.png
        args += [pics / "a.png", "--out", pics]
    elif case == "an input map could replace":
        os.rename(pics / "b.png", pics / "b.npy")  # any bytes behind any name are an input
        args += [pics / "a.png", pics / "b.npy", "--out", pics, "--maps"]
    elif case == "-o in --out":
        args += [pics / "a.png", "--out", tmp_path / "out", "-o", tmp_path / "out" / "a.png"]
    else:
        args += [pics / "a.png", "--out", tmp_path / "out", "-o", tmp_path / "out"]
    before = snapshot(tmp_path)
    res = cli("explain", *args)
    refused(res)
    assert "--out" in res.stderr
    assert snapshot(tmp_path) == before


def test_explain_beside_a_folder_it_does_not_descend_is_allowed(pics, r18, cli):
    res = cli("explain", pics, *r18, "--out", pics / "explained")
    assert res.code == 0, res.stderr
    assert sorted(p.name for p in (pics / "explained").iterdir()) == ["a.png", "b.png"]
    assert sorted(p.name for p in pics.iterdir()) == ["a.png", "b.png", "explained"]


@pytest.mark.parametrize("case", ["manifest", "confusion in a class folder", "predictions is -o",
                                  "two models, one confusion name", "checkpoint"])
def test_evaluate_outputs_are_neither_inputs_nor_each_other(case, data, r18, cli, tmp_path):
    if case == "manifest":
        manifest = tmp_path / "m.csv"
        manifest.write_text(f"path,label\n{data / '0' / '0.png'},0\n{data / '1' / '0.png'},1\n")
        args = [manifest, *r18, "--confusion", manifest]
    elif case == "confusion in a class folder":
        args = [data, *r18, "--confusion", data / "1" / "confusion.png"]
    elif case == "predictions is -o":
        args = [data, *r18, "--predictions", tmp_path / "p.jsonl", "-o", tmp_path / "p.jsonl"]
    elif case == "two models, one confusion name":
        args = [data, "-a", "resnet18,resnet18", "-w", r18[3], "--confusion", tmp_path / "c.csv"]
    else:  # a copy: the old code overwrote it
        shutil.copy(r18[3], tmp_path / "model.pth")
        args = [data, "-a", "resnet18", "-w", tmp_path / "model.pth", "-o", tmp_path / "model.pth"]
    before = snapshot(tmp_path)
    res = cli("evaluate", *args)
    refused(res)
    assert snapshot(tmp_path) == before


def test_embed_and_train_outputs_are_not_inputs(data, r18, cli, tmp_path):
    odd = tmp_path / "photo.jsonl"  # an image behind any name is an input
    shutil.copy(data / "0" / "0.png", odd)
    res = cli("embed", odd, *r18, "-o", odd)
    refused(res, "--output", "input")
    assert odd.read_bytes() == (data / "0" / "0.png").read_bytes()
    import torch
    from safetensors.torch import save_file

    model = tmp_path / "base.safetensors"
    save_file(torch.load(r18[3], weights_only=True), model)
    before = model.read_bytes()
    res = cli("train", data, "-a", "resnet18", "-w", model, "-o", model)
    refused(res, "--output", "input")
    assert model.read_bytes() == before


# ---- every output location before the first image ----------------------------------------------------------

LOCATIONS = [
    (["classify"], "-o", "x.jsonl"),
    (["classify"], "--report", "x.html"),
    (["explain"], "-o", "x.json"),
    (["explain"], "--report", "x.html"),
    (["evaluate"], "-o", "x.json"),
    (["evaluate"], "--predictions", "x.jsonl"),
    (["evaluate"], "--confusion", "x.csv"),
    (["evaluate"], "--confusion", "x.png"),
    (["evaluate"], "--report", "x.html"),
    (["embed"], "-o", "x.npy"),
    (["train"], "-o", "x.safetensors"),
]


@pytest.mark.parametrize("where", ["missing folder", "names a folder", "folder is a file"])
@pytest.mark.parametrize("command, option, name", LOCATIONS)
def test_every_output_location_is_checked_before_the_first_image(command, option, name, where, data, r18, cli,
                                                                  tmp_path, monkeypatch):
    monkeypatch.setattr("resnet_cli.run.engines.records", lambda *a, **k: pytest.fail("an image was read"))
    if where == "missing folder":
        target = tmp_path / "missing" / name
    elif where == "names a folder":
        target = tmp_path / name
        target.mkdir()
    else:
        (tmp_path / "notes").write_text("a file")
        target = tmp_path / "notes" / name
    inputs = [data] if command[0] in ("evaluate", "train") else [data / "0" / "0.png"]
    extra = ["--out", tmp_path / "overlays"] if command[0] == "explain" else []
    argv = [*command, *inputs, *r18, *extra, option, target]
    if command[0] == "embed" or command[0] == "train":
        argv = [*command, *inputs, *r18, option, target]
    res = cli(*argv)
    refused(res, option, name)
    assert not (tmp_path / "overlays").exists() or not any((tmp_path / "overlays").iterdir())


# ---- files the tool names: never through a symlink, names cut by bytes --------------------------------------

@pytest.mark.parametrize("maps", [False, True])
def test_a_symlink_at_an_overlay_name_is_refused_and_never_followed(maps, pics, r18, cli, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("precious notes")
    os.symlink("../elsewhere/notes.txt", out / ("a.npy" if maps else "a.png"))
    os.symlink("../elsewhere/created.png", out / "b.png")  # dangling: would create a file elsewhere
    res = cli("explain", pics / "a.png", pics / "b.png", *r18, "--out", out, *(["--maps"] if maps else []),
              "-f", "jsonl")
    assert res.code == 1, res.stderr
    records = res.jsonl()
    assert [r["error"]["type"] for r in records] == ["write_failed", "write_failed"]
    assert "symlink" in records[0]["error"]["message"]
    assert "write_failed" in res.stderr and "Traceback" not in res.stderr
    assert (elsewhere / "notes.txt").read_text() == "precious notes"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt"]
    assert os.readlink(out / "b.png") == "../elsewhere/created.png"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_folder_at_an_overlay_name_fails_that_input_only(pics, r18, cli, tmp_path):
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)
    res = cli("explain", pics / "a.png", pics / "b.png", *r18, "--out", out, "-f", "jsonl")
    assert res.code == 1, res.stderr
    first, second = res.jsonl()
    assert first["error"]["type"] == "write_failed"
    assert second["explanation"]["overlay"] == str(out / "b.png")
    assert Image.open(out / "b.png").format == "PNG"


def test_a_symlink_the_user_names_as_output_is_still_followed(pics, r18, cli, tmp_path):
    (tmp_path / "real.json").write_text("old")
    os.symlink("real.json", tmp_path / "link.json")
    assert cli(pics / "a.png", *r18, "-o", tmp_path / "link.json").code == 0
    assert (tmp_path / "link.json").is_symlink()
    assert json.loads((tmp_path / "real.json").read_text())[0]["path"] == str(pics / "a.png")


@pytest.mark.parametrize("char", ["猫", "𠮷", "é"])  # 3, 4 and 2 bytes of UTF-8
def test_a_name_long_in_bytes_gets_an_overlay_and_the_run_goes_on(char, pics, r18, cli, tmp_path):
    n = (250 - 4) // len(char.encode())
    long = pics / (char * n + ".png")  # close to 255 bytes: a character limit let the overlay's name overflow
    assert 240 < len(long.name.encode()) <= 255
    shutil.copy(pics / "a.png", long)
    out = tmp_path / "out"
    res = cli("explain", long, pics / "b.png", *r18, "--out", out, "--maps", "-f", "jsonl")
    assert res.code == 0, res.stderr
    first, second = res.jsonl()
    overlay = Path(first["explanation"]["overlay"])
    assert overlay.exists() and Path(first["explanation"]["map"]).exists()
    assert len(overlay.name.encode()) <= 255 - 14 and char * 10 in overlay.stem
    assert long.stem.startswith(overlay.stem)  # cut, never inside a character
    assert second["explanation"]["overlay"] == str(out / "b.png") and (out / "b.png").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([overlay.name, overlay.stem + ".npy", "b.png", "b.npy"])


def test_an_output_named_close_to_the_limit_is_written(pics, r18, cli, tmp_path):
    target = tmp_path / ("猫" * 82 + ".json")  # 251 bytes: the temporary name beside it must be cut to fit
    res = cli(pics / "a.png", *r18, "-o", target)
    assert res.code == 0, res.stderr
    assert json.loads(target.read_text())[0]["path"] == str(pics / "a.png")
    assert sorted(tmp_path.iterdir()) == sorted([pics, target])
    res = cli(pics / "a.png", *r18, "-o", tmp_path / ("猫" * 90 + ".json"))
    refused(res, "--output", "longer than the file system allows")


# ---- permissions -------------------------------------------------------------------------------------------

def modes(folder: Path) -> dict:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_kind_of_output_is_0644_under_umask_022(data, r18, cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    one = data / "0" / "0.png"
    old = os.umask(0o022)
    try:
        assert cli(one, *r18, "-o", out / "c.json", "--report", out / "c.html").code == 0
        assert cli(one, *r18, "-o", out / "c.csv").code == 0
        assert cli(one, *r18, "-o", out / "c.jsonl").code == 0
        assert cli("explain", one, *r18, "--out", out / "ex", "--maps", "-o", out / "e.csv").code == 0
        assert cli("evaluate", data, *r18, "-o", out / "ev.json", "--predictions", out / "p.jsonl",
                   "--confusion", out / "m.png", "--report", out / "ev.html").code == 0
        assert cli("embed", data, *r18, "-r", "-o", out / "v.npy").code == 0
        res = cli("train", data, *r18, "-o", out / "model.safetensors", "--epochs", "3")
        assert res.code == 0, res.stderr
    finally:
        os.umask(old)
    found = modes(out)
    assert {os.path.splitext(name)[1] for name in found} == {".json", ".jsonl", ".csv", ".html", ".png",
                                                              ".npy", ".safetensors"}
    assert found == {name: oct(0o644) for name in found}


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_a_trained_model_gets_the_permissions_of_any_other_output(umask, data, r18, cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    old = os.umask(umask)
    try:
        res = cli("train", data, *r18, "-o", out / "model.safetensors", "--epochs", "3")
        assert res.code == 0, res.stderr
    finally:
        os.umask(old)
    found = modes(out)
    assert found == {"model.safetensors": oct(0o666 & ~umask)}


def test_a_replaced_output_keeps_its_permissions(pics, r18, cli, tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    target.chmod(0o640)
    assert cli(pics / "a.png", *r18, "-o", target).code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


# ---- CSV cells that a spreadsheet would run ----------------------------------------------------------------

HOSTILE = ['=HYPERLINK("x").png', "-a.png", "'q.png", "+1.png", "@SUM(A1).png", "\tt.png"]


def test_csv_cells_that_start_a_formula_are_escaped(tmp_path, checkpoint, cli, monkeypatch):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = HOSTILE + ["plain.png"]
    for name in names:
        small_png(folder / name)
    labels = tmp_path / "labels.txt"  # labels are cells too
    labels.write_text("".join(f"=cmd{i}\n" if i % 2 else f"-{i}\n" for i in range(1000)))
    monkeypatch.chdir(folder)
    out = tmp_path / "r.csv"
    ckpt = checkpoint("resnet18")
    assert cli("-a", "resnet18", "-w", ckpt, "--labels", labels, "-o", out, "--", *names, "missing.png").code == 1
    rows = list(csv.DictReader(out.open(newline="")))
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert [r["path"] for r in rows if r["rank"] in ("1", "")] == ["'" + n for n in HOSTILE] + ["plain.png",
                                                                                                "missing.png"]
    assert all(r["label"][:2] in ("'=", "'-") for r in rows if r["rank"])
    counts = tmp_path / "m.csv"  # evaluate's confusion matrix: labels as cells
    data = tmp_path / "data"
    for i, label in enumerate(["-0", "=cmd1"]):
        (data / label).mkdir(parents=True)
        small_png(data / label / "x.png", (200 * i, 40, 40))
    assert cli("evaluate", data, "-a", "resnet18", "-w", ckpt, "--labels", labels, "--confusion", counts).code == 0
    header = next(csv.reader(counts.open(newline="")))
    assert header == ["label", "'-0", "'=cmd1", "other"]


def test_an_interrupted_csv_run_with_formula_names_resumes_byte_for_byte(tmp_path, checkpoint, cli,
                                                                         monkeypatch):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = HOSTILE + ["plain.png"]
    for i, name in enumerate(names):
        small_png(folder / name, (20 * i, 100, 200 - 20 * i))
    monkeypatch.chdir(folder)
    r18 = ["-a", "resnet18", "-w", str(checkpoint("resnet18"))]
    out, whole = tmp_path / "out.csv", tmp_path / "whole.csv"
    assert cli(*r18, "-o", out, "--", *names[:3]).code == 0  # what an interrupted run leaves: the first records
    assert cli(*r18, "-o", out, "--resume", "--", *names).code == 0
    assert cli(*r18, "-o", whole, "--", *names).code == 0
    assert out.read_bytes() == whole.read_bytes()
    cells = [row[0] for row in csv.reader(io.StringIO(whole.read_text(), newline=""))][1:]
    assert cells[0] == "'" + names[0] and "'-a.png" in cells and "''q.png" in cells and "plain.png" in cells
    assert "'\tt.png" in cells and "'+1.png" in cells and "'@SUM(A1).png" in cells
