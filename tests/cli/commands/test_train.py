"""`train`: a linear probe on the frozen network's features, against scikit-learn's LogisticRegression on
torchvision-computed features of the same split; the saved model then classifies and evaluates by itself."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from checkpoints import PHOTOS, augment
from PIL import Image

CLASSES = ["astronaut", "camera", "cat", "coffee", "grace hopper", "rocket"]  # one per sample photo, in order


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six classes of eight augmented copies each: five to train on, three to validate on."""
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("six")
    for name, photo in zip(CLASSES, PHOTOS):
        img = Image.open(photo).convert("RGB")
        for i in range(8):
            split = "train" if i < 5 else "val"
            folder = root / split / name.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            augment(img, rng).save(folder / f"{i}.jpg", quality=90)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def torchvision_features(ckpt, paths) -> np.ndarray:
    import torch
    import torchvision

    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval()
    tf = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    with torch.no_grad():
        return model(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])).numpy()


def images(folder) -> tuple[list, list]:
    paths = sorted(p for p in folder.rglob("*.jpg") if p.name != "broken.jpg")
    return paths, [p.parent.name for p in paths]


@pytest.mark.timeout(600)
def test_train_matches_scikit_learn_and_the_model_classifies_by_itself(dataset, checkpoint, cli, tmp_path):
    from sklearn.linear_model import LogisticRegression

    ckpt = checkpoint("resnet18")
    model = tmp_path / "mine.safetensors"
    args = ("train", dataset / "train", "--val-data", dataset / "val", "-a", "resnet18", "-w", ckpt, "-o", model,
            "-f", "json")
    first = cli(*args)
    assert first.code == 1, first.stderr  # broken.jpg could not be read
    report = json.loads(first.stdout)
    assert report["classes"] == sorted(c.replace(" ", "_") for c in CLASSES)
    assert report["features"] == {"cached": 0, "extracted": 48, "failed": 1}  # 48 images and the broken file
    assert [f["path"] for f in report["failures"]] == [str(dataset / "train" / "cat" / "broken.jpg")]
    assert "1 image(s) could not be read and are left out" in first.stderr
    assert report["train"]["images"] == 30 and report["val"]["images"] == 18
    first_model = model.read_bytes()

    # the oracle: scikit-learn on torchvision's features of the same split
    train_paths, train_labels = images(dataset / "train")
    val_paths, val_labels = images(dataset / "val")
    sk = LogisticRegression(max_iter=5000).fit(torchvision_features(ckpt, train_paths), train_labels)
    sk_val = sk.score(torchvision_features(ckpt, val_paths), val_labels)
    assert report["val"]["accuracy"] >= sk_val - 0.05, (report["val"]["accuracy"], sk_val)

    # a second run with other settings reads every feature from the cache (the counts say so; how much sooner it
    # ends is the benchmark's to measure, not a test's)
    second = cli(*args[:-2], "--max-iter", "50", "-f", "json")
    again = json.loads(second.stdout)
    assert again["features"] == {"cached": 48, "extracted": 0, "failed": 1}  # only the unreadable file is tried again
    # deterministic: the same data and options give the same file, to the byte
    twin = tmp_path / "twin.safetensors"
    assert cli(*args[:-4], "-o", twin, "-f", "json").code == 1
    assert twin.read_bytes() == first_model
    assert cli(*args[:-4], "-o", model, "-f", "json").code == 1  # the model the checks below use

    # the saved model classifies with its own class names, no --arch, no --labels
    res = cli(val_paths[0], "-w", model, "-f", "jsonl")
    assert res.code == 0, res.stderr
    [rec] = res.jsonl()
    assert rec["arch"] == "resnet18" and len(rec["topk"]) == 5
    assert {p["label"] for p in rec["topk"]} <= set(report["classes"])
    # and evaluates: the validation accuracy the report gave
    res = cli("evaluate", dataset / "val", "-w", model, "-f", "json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["top1"] == pytest.approx(report["val"]["accuracy"], abs=1e-9)


def test_a_class_with_no_usable_image_is_a_usage_error(tmp_path, checkpoint, cli):
    data = tmp_path / "data"
    for name in ("good", "bad"):
        (data / name).mkdir(parents=True)
    Image.open(PHOTOS[0]).convert("RGB").save(data / "good" / "a.jpg")
    Image.open(PHOTOS[1]).convert("RGB").save(data / "good" / "b.jpg")
    (data / "bad" / "x.jpg").write_text("not an image")
    res = cli("train", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", tmp_path / "m.safetensors")
    assert res.code == 2 and "no usable training image for class 'bad'" in res.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_the_split_is_stratified_and_seeded():
    from resnet_cli.cli.commands.train import split

    items = [(i, "a") for i in range(10)] + [(i, "b") for i in range(10, 13)] + [(99, "c")]
    train, val = split(items, 0.3, seed=1)
    assert sorted(x for x, _ in train + val) == sorted(x for x, _ in items)
    assert sum(1 for _, c in val if c == "a") == 3 and sum(1 for _, c in val if c == "b") == 1
    assert all(c != "c" for _, c in val)  # a single image stays in training
    assert (train, val) == split(items, 0.3, seed=1) and (train, val) != split(items, 0.3, seed=2)


def test_epochs_is_a_deprecated_name_of_max_iter(cli, tmp_path):
    """--epochs was L-BFGS's iteration cap under a misleading name: still accepted, with a note saying what it is;
    the help shows --max-iter only."""
    res = cli("train", str(tmp_path), "-o", str(tmp_path / "m.safetensors"), "--epochs", "5")
    assert "--epochs is deprecated: it is --max-iter" in res.stderr
    assert res.code == 2  # then the empty folder is refused as usual: the option itself was taken
    help_text = cli("train", "--help").text
    assert "--max-iter" in help_text and "--epochs" not in help_text
