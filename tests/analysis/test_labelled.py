"""Labels and labelled data as people actually have them: class names that are numbers, text files with a
byte-order mark, folders unzipped on a Mac, leaderboards whose second model cannot run, unreadable training
images, narrow terminals and the first model's start-up."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time

import pytest
from PIL import Image, ImageOps

from checkpoints import PHOTOS

BOM = "\ufeff"


def _copies(folder, photo, n: int = 3) -> None:
    """n pictures of one photo (the photo, mirrored, cropped) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.open(photo).convert("RGB")
    w, h = img.size
    variants = [img, ImageOps.mirror(img), img.crop((w // 10, h // 10, w - w // 10, h - h // 10))]
    for i in range(n):
        variants[i % 3].resize((96, 96 * h // w)).save(folder / f"{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def digit_classes(tmp_path_factory):
    """Folders `1`, `2`, `3`, three pictures of one photo each: class names that are also class indices."""
    root = tmp_path_factory.mktemp("digits") / "data"
    for name, photo in zip(("1", "2", "3"), PHOTOS):
        _copies(root / name, photo)
    return root


@pytest.fixture(scope="module")
def digit_model(digit_classes, tmp_path_factory, checkpoint):
    """A model `train` made on folders 1, 2, 3 (every image in training), and its report."""
    import io
    import sys

    from resnet_cli.cli import run

    model = tmp_path_factory.mktemp("model") / "digits.safetensors"
    with pytest.MonkeyPatch.context() as mp:  # the cli fixture is per test: this model is made once
        buf = io.StringIO()
        mp.setattr(sys, "stdout", buf)
        code = run(["train", str(digit_classes), "-a", "resnet18", "-w", str(checkpoint("resnet18")), "-o",
                    str(model), "--val", "0", "-f", "json", "-q"])
    assert code == 0
    return model, json.loads(buf.getvalue())


# --- a label that is both a class index and a class name ------------------------------------------------------

def test_a_class_named_1_is_class_1_not_index_1(digit_classes, digit_model, cli):
    model, report = digit_model
    assert report["classes"] == ["1", "2", "3"] and report["train"]["accuracy"] == 1.0
    for extra in ((), ("--restrict",)):
        res = cli("evaluate", digit_classes, "-w", model, "-f", "json", *extra)
        assert res.code == 0, res.stderr
        result = json.loads(res.stdout)
        assert [(c["label"], c["index"], c["support"]) for c in result["classes"]] == \
            [("1", 0, 3), ("2", 1, 3), ("3", 2, 3)]
        assert result["top1"] == 1.0, extra  # the model is right on every image it was trained on
        assert result["misclassified"] == []


def test_a_class_named_1_in_a_manifest_and_its_predictions(digit_classes, digit_model, cli, tmp_path):
    model, _ = digit_model
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for p in sorted(digit_classes.rglob("*.jpg")):
            writer.writerow([p, p.parent.name])
    preds = tmp_path / "p.jsonl"
    res = cli("evaluate", manifest, "-w", model, "-f", "json", "--predictions", preds)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["top1"] == 1.0
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert all(r["label"] == r["topk"][0]["label"] == r["path"].split("/")[-2] for r in records)


def test_explain_target_1_explains_the_class_named_1(digit_classes, digit_model, cli, tmp_path):
    model, _ = digit_model
    image = digit_classes / "2" / "0.jpg"
    for target, index in (("1", 0), ("3", 2), ("2", 1)):
        res = cli("explain", image, "-w", model, "--target", target, "--out", tmp_path / "x", "-f", "jsonl")
        assert res.code == 0, res.stderr
        [rec] = res.jsonl()
        assert (rec["explanation"]["target"]["label"], rec["explanation"]["target"]["index"]) == (target, index)
    # a number that is no class's name, where the class names are numbers: both readings named, no guess
    res = cli("explain", image, "-w", model, "--target", "0", "--out", tmp_path / "x")
    assert res.code == 2
    assert "'0'" in res.stderr and "class 0, named '1'" in res.stderr


def test_an_exact_name_wins_over_an_index_and_a_number_is_an_index_otherwise():
    from resnet_cli.models import registry
    from resnet_cli.core.errors import UsageError
    from resnet_cli.analysis.labelled import match

    assert match(["1", "2", "3"], ("1", "2", "3")) == {"1": 0, "2": 1, "3": 2}
    assert match(["10", "30"], ("30", "20", "10")) == {"10": 2, "30": 0}
    assert match(["tench", "1"], ("tench", "goldfish")) == {"tench": 0, "1": 1}  # no name is a number
    assert match(["285", "n02124075", "tabby"], registry.categories()) == \
        {"285": 285, "n02124075": 285, "tabby": 281}
    with pytest.raises(UsageError, match=r"'3' is no class's name.*class 3, named '5'"):
        match(["3"], ("1", "2", "4", "5"))


@pytest.mark.parametrize("label", ["²", "٣", "³", "1²", "①"])
def test_a_label_of_non_ascii_digits_names_no_class_and_does_not_crash(label, tmp_path, checkpoint, cli):
    """str.isdigit() is True for these (int() even reads '٣' as 3): they are names, not indices."""
    from resnet_cli.core.errors import UsageError
    from resnet_cli.analysis.labelled import match

    with pytest.raises(UsageError, match="names no class"):
        match([label], ("a", "b", "c", "d"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(PHOTOS[0]), "label": label}) + "\n", encoding="utf-8")
    res = cli("evaluate", manifest, "-a", "resnet18", "-w", checkpoint("resnet18"))
    assert res.code == 2 and "names no class of resnet18" in res.stderr and "Traceback" not in res.stderr


# --- byte-order marks --------------------------------------------------------------------------------------------

def test_a_labels_file_with_a_byte_order_mark(tmp_path, checkpoint, cli):
    ckpt = checkpoint("resnet18", num_classes=3)
    names = tmp_path / "labels.txt"
    names.write_bytes(("tench\r\ngoldfish\r\nshark\r\n").encode("utf-8-sig"))  # as Notepad saves it
    data = tmp_path / "data"
    _copies(data / "tench", PHOTOS[0], 1)
    _copies(data / "goldfish", PHOTOS[1], 1)
    res = cli("evaluate", data, "-a", "resnet18", "-w", ckpt, "--labels", names, "-f", "json")
    assert res.code == 0, res.stderr
    assert [c["label"] for c in json.loads(res.stdout)["classes"]] == ["tench", "goldfish"]
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", ckpt, "--labels", names, "-f", "jsonl")
    assert res.code == 0, res.stderr
    assert sorted(p["label"] for p in res.jsonl()[0]["topk"]) == ["goldfish", "shark", "tench"]


def test_manifests_with_a_byte_order_mark(tmp_path, checkpoint, cli):
    rows = [(str(PHOTOS[0]), "tabby"), (str(PHOTOS[1]), "281")]
    csv_file = tmp_path / "m.csv"
    csv_file.write_bytes(("path,label\r\n" + "".join(f"{p},{label}\r\n" for p, label in rows)).encode("utf-8-sig"))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes("".join(json.dumps({"path": p, "label": label}) + "\n" for p, label in rows)
                      .encode("utf-8-sig"))
    ndjson = tmp_path / "m.ndjson"
    shutil.copy(jsonl, ndjson)
    for manifest in (csv_file, jsonl, ndjson):
        res = cli("evaluate", manifest, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "json")
        assert res.code == 0, (manifest, res.stderr)
        result = json.loads(res.stdout)
        assert result["images"] == 2 and [(c["label"], c["support"]) for c in result["classes"]] == [("tabby", 2)]


def test_train_reads_a_manifest_with_a_byte_order_mark(tmp_path, checkpoint, cli):
    data = tmp_path / "data"
    _copies(data / "a", PHOTOS[0], 2)
    _copies(data / "b", PHOTOS[1], 2)
    manifest = tmp_path / "train.jsonl"
    manifest.write_bytes("".join(json.dumps({"path": str(p), "label": p.parent.name}) + "\n"
                                 for p in sorted(data.rglob("*.jpg"))).encode("utf-8-sig"))
    model = tmp_path / "m.safetensors"
    res = cli("train", manifest, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", model, "--val", "0",
              "-f", "json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["classes"] == ["a", "b"]


# --- macOS and Windows leftovers -----------------------------------------------------------------------------

def _leftovers(folder) -> None:
    """What an unzipped Mac archive and a Windows folder add around the pictures."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "._0.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")  # AppleDouble
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")


def test_classify_skips_macos_and_windows_leftovers(tmp_path, checkpoint, cli):
    photos = tmp_path / "photos"
    _copies(photos, PHOTOS[0], 1)
    _leftovers(photos)
    _leftovers(photos / "__MACOSX")
    (photos / "__MACOSX" / "._1.png").write_bytes(b"\x00\x05\x16\x07")
    for extra in ((), ("--recursive",)):
        res = cli(photos, *extra, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "jsonl")
        assert res.code == 0, res.stderr
        assert [r["path"] for r in res.jsonl()] == [str(photos / "0.jpg")]


def test_evaluate_skips_leftovers_and_a_macosx_class_folder(tmp_path, checkpoint, cli):
    data = tmp_path / "data"
    _copies(data / "tabby", PHOTOS[0], 2)
    _leftovers(data / "tabby")
    _leftovers(data)
    _leftovers(data / "__MACOSX" / "tabby")
    res = cli("evaluate", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "json")
    assert res.code == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["images"] == 2 and result["failed"] == 0
    assert "belong to no class" not in res.stderr  # .DS_Store and the like are not files left out


def test_train_skips_leftovers(tmp_path, checkpoint, cli):
    data = tmp_path / "data"
    for name, photo in (("a", PHOTOS[0]), ("b", PHOTOS[1])):
        _copies(data / name, photo, 2)
        _leftovers(data / name)
    _leftovers(data / "__MACOSX" / "a")
    res = cli("train", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", tmp_path / "m.safetensors",
              "--val", "0", "-f", "json")
    assert res.code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["classes"] == ["a", "b"] and report["failures"] == [] and report["train"]["images"] == 4


def test_an_empty_class_folder_is_a_usage_error_as_a_class_of_unreadable_files_is(tmp_path, checkpoint, cli):
    data = tmp_path / "data"
    _copies(data / "a", PHOTOS[0], 2)
    _copies(data / "b", PHOTOS[1], 2)
    (data / "empty").mkdir()
    model = tmp_path / "m.safetensors"
    res = cli("train", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", model)
    assert res.code == 2 and "no usable training image for class 'empty'" in res.stderr
    assert not model.exists()
    _leftovers(data / "empty")  # leftovers are not images: the folder is still empty
    res = cli("train", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", model)
    assert res.code == 2 and "class 'empty' (its folder" in res.stderr
    assert not model.exists()
    shutil.rmtree(data / "empty")
    (data / "bad").mkdir()
    (data / "bad" / "x.jpg").write_text("not an image")
    res = cli("train", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", model)
    assert res.code == 2 and "no usable training image for class 'bad'" in res.stderr
    assert not model.exists()


def test_evaluate_says_a_class_folder_is_empty(tmp_path, checkpoint, cli):
    data = tmp_path / "data"
    _copies(data / "tabby", PHOTOS[0], 1)
    (data / "tench").mkdir()
    res = cli("evaluate", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "json")
    assert res.code == 0, res.stderr
    assert "'tench' hold no image" in res.stderr


# --- a leaderboard checks every model before the first image --------------------------------------------------

@pytest.fixture
def small_data(tmp_path):
    data = tmp_path / "data"
    _copies(data / "tabby", PHOTOS[0], 2)
    (data / "tabby" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # any run reports it on stderr
    return data


def test_a_missing_second_model_stops_the_leaderboard_before_the_first_image(small_data, checkpoint, cli,
                                                                           tmp_path):
    out = tmp_path / "board.json"
    res = cli("evaluate", small_data, "-a", "resnet18,resnet50", "-w", f"{checkpoint('resnet18')},DEFAULT",
              "--offline", "-o", out)
    assert res.code == 3  # weights not available (docs/output.md's exit codes)
    assert "resnet50-11ad3fa6.pth" in res.stderr  # the file to fetch
    assert "broken.jpg" not in res.stderr and not out.exists()  # no image was read, nothing written


def test_every_missing_weights_file_is_named_at_once(small_data, cli):
    res = cli("evaluate", small_data, "-a", "resnet50,resnet101,resnet18", "--offline")
    assert res.code == 3
    for name in ("resnet50-11ad3fa6.pth", "resnet101-cd907fc2.pth", "resnet18-f37072fd.pth"):
        assert name in res.stderr
    assert "3 of the 3 models" in res.stderr and "broken.jpg" not in res.stderr


def test_a_checkpoint_that_does_not_fit_the_second_arch_is_found_from_its_shapes(small_data, checkpoint, cli,
                                                                                 monkeypatch, tmp_path):
    from resnet_cli.models import weights

    ck18 = checkpoint("resnet18")
    read = weights.read_state_dict
    loads = []
    monkeypatch.setattr(weights, "read_state_dict", lambda path: loads.append(path) or read(path))
    out = tmp_path / "board.json"
    res = cli("evaluate", small_data, "-a", "resnet18,resnet34,resnet50", "-w", f"{ck18},{ck18},DEFAULT",
              "--offline", "-o", out)
    assert res.code == 2 and not out.exists()
    assert f"checkpoint {ck18} does not fit resnet34" in res.stderr and "resnet50-11ad3fa6.pth" in res.stderr
    assert "broken.jpg" not in res.stderr
    assert loads == []  # judged from the file's shapes: no tensor was read


def test_labels_the_second_model_cannot_name_stop_the_leaderboard_before_the_first_image(small_data, checkpoint,
                                                                                       cli):
    res = cli("evaluate", small_data, "-a", "resnet18", "-w",
              f"{checkpoint('resnet18')},{checkpoint('resnet18', num_classes=3)}")
    assert res.code == 2 and "'tabby' names no class" in res.stderr and "broken.jpg" not in res.stderr


# --- train's exit code ------------------------------------------------------------------------------------------

def test_train_exits_1_when_an_image_could_not_be_read(tmp_path, checkpoint, cli):
    data = tmp_path / "data"
    _copies(data / "a", PHOTOS[0], 2)
    _copies(data / "b", PHOTOS[1], 2)
    (data / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    model = tmp_path / "m.safetensors"
    args = ("train", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", model, "--val", "0", "-f", "json")
    res = cli(*args)
    assert res.code == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["features"] == {"cached": 0, "extracted": 4, "failed": 1}
    assert [f["path"] for f in report["failures"]] == [str(data / "b" / "broken.jpg")]
    assert model.exists()  # the model is trained on the images that could be read, as classify goes on
    again = cli(*args)
    assert again.code == 1
    assert json.loads(again.stdout)["features"] == {"cached": 4, "extracted": 0, "failed": 1}
    (data / "b" / "broken.jpg").unlink()
    assert cli(*args).code == 0


# --- the leaderboard ------------------------------------------------------------------------------------------

def test_a_narrow_leaderboard_folds_only_the_weights_column(small_data, checkpoint, cli, tmp_path, monkeypatch):
    deep = tmp_path / "a-rather-long-folder-name-for-checkpoints" / "experiments-of-the-week"
    deep.mkdir(parents=True)
    ck18, ck34 = deep / "resnet18-seeded-checkpoint.pth", deep / "resnet18-seeded-checkpoint-copy.pth"
    shutil.copy(checkpoint("resnet18"), ck18)
    shutil.copy(checkpoint("resnet18"), ck34)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich draws as on a terminal of COLUMNS columns
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    res = cli("evaluate", small_data, "-a", "resnet18", "-w", f"{ck18},{ck34}", "-f", "table")
    assert res.code == 1, res.stderr  # broken.jpg
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in res.text.splitlines()]
    assert max(len(line) for line in lines) <= 80
    assert "…" not in "".join(lines)  # nothing cut short
    header = next(line for line in lines if "weights" in line)
    assert header.split() == ["arch", "weights", "acc@1", "acc@5", "images/s", "params", "GFLOPS", "failed"]
    rows = [line for line in lines if line.startswith("resnet18")]
    assert len(rows) == 2
    for row in rows:  # every value whole, the failure count included
        assert "11.7 M" in row and row.split()[-1] == "1" and re.search(r" \d+\.\d% +\d+\.\d% ", row)
    # the weights column folds the paths onto more lines: all of each path is still there, in order
    col = header.index("weights")
    body = [line for line in lines[lines.index(header) + 2:] if line[col:col + 1].strip() and "sorted by" not in line]
    assert "".join(line[col:].split()[0] for line in body) == f"{ck18}{ck34}"


@pytest.mark.timeout(300)
def test_throughput_leaves_out_loading_and_the_warm_up_batch(small_data, checkpoint, cli, monkeypatch):
    """A clock that jumps 1000 s while the model loads and during its first forward pass: neither may show in
    images/s (the first model of a leaderboard pays torch's start-up there)."""
    from resnet_cli.models import inference

    real = time.perf_counter
    skew = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + skew[0])
    load_for = inference.load_for

    def slow_load(*args, **kwargs):
        skew[0] += 1000.0
        return load_for(*args, **kwargs)

    call = inference.Predictor.classify
    calls = []

    def slow_first_batch(self, *args, **kwargs):
        if self not in calls:  # each model's first batch
            skew[0] += 1000.0
        calls.append(self)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(inference, "load_for", slow_load)
    monkeypatch.setattr(inference.Predictor, "classify", slow_first_batch)
    _copies(small_data / "tabby", PHOTOS[0], 3)
    res = cli("evaluate", small_data, "-a", "resnet18,resnet18", "-w", f"{checkpoint('resnet18')}", "-b", "1",
              "-f", "json", "--workers", "1")
    assert res.code == 1, res.stderr
    first, second = json.loads(res.stdout)
    assert len(calls) >= 4  # at least two batches a model
    for result in (first, second):
        assert result["images_per_second"] > 0.05, result["images_per_second"]  # 1000 s in it: under 0.005
