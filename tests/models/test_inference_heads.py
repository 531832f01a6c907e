"""Heads that are not a plain softmax classifier's: a one-output head (a sigmoid binary classifier), and weights
whose outputs are not finite numbers. Each answer is checked against torchvision on the same checkpoint."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil

import pytest
import torch
import torchvision
from PIL import Image

from checkpoints import PHOTOS


def strict(text: str):
    """json.loads that refuses NaN and infinities, as every strict JSON reader does."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def logits_of(ckpt, num_classes: int) -> dict[str, torch.Tensor]:
    """torchvision's logits for each sample photo: its builder, its transforms, the same checkpoint."""
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=num_classes)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tf = torchvision.models.get_model_weights("resnet18").DEFAULT.transforms()
    with torch.inference_mode():
        return {p.name: model(tf(Image.open(p).convert("RGB")).unsqueeze(0))[0] for p in PHOTOS}


def name(record: dict) -> str:
    return record["path"].rsplit("/", 1)[-1]


# ---- a one-output head: a sigmoid binary classifier ----

@pytest.fixture(scope="module")
def binary(checkpoint):
    return checkpoint("resnet18", num_classes=1)


def test_a_one_output_head_is_a_sigmoid_over_two_classes(binary, photos_dir, cli):
    res = cli(photos_dir, "-a", "resnet18", "-w", binary, "-f", "jsonl")
    assert res.code == 0, res.stderr
    ref = logits_of(binary, 1)
    records = res.jsonl()
    assert sorted(name(r) for r in records) == sorted(p.name for p in PHOTOS)
    positives = []
    for r in records:
        z = ref[name(r)]
        positive = float(torch.sigmoid(z)[0])
        expected = {0: 1.0 - positive, 1: positive}
        assert [t["rank"] for t in r["topk"]] == [1, 2]  # two classes, both ranked
        assert sorted(t["index"] for t in r["topk"]) == [0, 1]
        assert {t["index"]: t["label"] for t in r["topk"]} == {0: "class_0", 1: "class_1"}
        for t in r["topk"]:
            assert t["probability"] == pytest.approx(expected[t["index"]], abs=1e-5), (r["path"], t)
        assert r["topk"][0]["probability"] >= 0.5
        assert sum(t["probability"] for t in r["topk"]) == pytest.approx(1.0, abs=1e-6)
        positives.append(positive)
    # never the softmax over one logit (every image class 0 at 1.0): the seeded photos go both ways here
    assert any(p > 0.5 for p in positives) and any(p < 0.5 for p in positives), positives


def test_a_one_output_head_takes_two_labels(binary, photos_dir, cli, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\ncat\n")
    res = cli(photos_dir, "-a", "resnet18", "-w", binary, "--labels", labels, "-k", "1", "-f", "jsonl")
    assert res.code == 0, res.stderr
    ref = logits_of(binary, 1)
    for r in res.jsonl():
        assert len(r["topk"]) == 1
        positive = float(torch.sigmoid(ref[name(r)])[0]) > 0.5
        assert r["topk"][0]["label"] == ("cat" if positive else "dog")
    one = tmp_path / "one.txt"
    one.write_text("cat\n")
    res = cli(photos_dir, "-a", "resnet18", "-w", binary, "--labels", one)
    assert res.code == 2 and "one.txt" in res.stderr and "2 classes" in res.stderr
    res = cli(photos_dir, "-a", "resnet18", "-w", binary, "-k", "3")
    assert res.code == 2 and "2 classes" in res.stderr


def test_a_one_output_head_is_the_same_bytes_alone_or_in_a_batch(binary, photos_dir, cli):
    together = cli(photos_dir, "-a", "resnet18", "-w", binary, "-f", "jsonl", "-b", "3").jsonl()
    alone = [cli(p, "-a", "resnet18", "-w", binary, "-f", "jsonl").jsonl()[0]
             for p in sorted(photos_dir.iterdir())[:3]]
    assert sorted(together, key=name)[:3] == sorted(alone, key=name)


def test_evaluate_and_explain_work_on_a_one_output_head(binary, cli, tmp_path):
    ref = logits_of(binary, 1)
    data = tmp_path / "data"
    for p in PHOTOS:
        truth = "class_1" if float(ref[p.name][0]) > 0 else "class_0"
        (data / truth).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, data / truth / p.name)
    res = cli("evaluate", data, "-a", "resnet18", "-w", binary, "-f", "json")
    assert res.code == 0, res.stderr
    report = strict(res.text)
    report = report[0] if isinstance(report, list) else report
    assert report["top1"] == 1.0  # every photo is in the folder of the class the sigmoid gives it

    out = tmp_path / "maps"
    res = cli("explain", data, "-r", "-a", "resnet18", "-w", binary, "--out", out, "-f", "jsonl")
    assert res.code == 0, res.stderr
    for r in res.jsonl():
        positive = float(torch.sigmoid(ref[name(r)])[0])
        target = r["explanation"]["target"]
        assert target["index"] == int(positive > 0.5)
        assert target["probability"] == pytest.approx(max(positive, 1 - positive), abs=1e-5)
        assert (out / f"{name(r).rsplit('.', 1)[0]}.png").exists() or r["explanation"]["overlay"]
    res = cli("explain", data / "class_1", "-a", "resnet18", "-w", binary, "--out", out, "--target", "class_0",
              "-f", "jsonl")
    assert res.code == 0, res.stderr
    assert {r["explanation"]["target"]["label"] for r in res.jsonl()} == {"class_0"}


# ---- outputs that are not finite numbers ----

def broken(ckpt, tmp_path, key: str, where: tuple, value: float, num_classes: int = 10):
    state = torch.load(ckpt, weights_only=True)
    state[key][where] = value
    path = tmp_path / f"broken-{key}-{value}.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("key,where,value", [
    ("fc.weight", (3, 0), math.nan),
    ("fc.weight", (0, 7), math.inf),
    ("fc.bias", (5,), -math.inf),  # one logit -inf: the softmax would still be finite, the output is not
    ("layer4.1.bn2.bias", (0,), math.inf),  # an infinite feature before the head
])
def test_a_non_finite_output_is_a_failure_in_strict_json(checkpoint, photos_dir, cli, tmp_path, key, where, value):
    bad = broken(checkpoint("resnet18", num_classes=10), tmp_path, key, where, value)
    res = cli(photos_dir, "-a", "resnet18", "-w", bad, "-f", "jsonl")
    assert res.code == 1
    records = [strict(line) for line in res.text.splitlines()]
    assert len(records) == len(PHOTOS)
    assert {r["error"]["type"] for r in records} == {"non_finite_output"}
    if key != "fc.weight" or not math.isnan(value):
        return  # the other formats once: the record is the same whatever made it

    out = tmp_path / "out.json"
    assert cli(photos_dir, "-a", "resnet18", "-w", bad, "-o", out).code == 1
    assert {r["error"]["type"] for r in strict(out.read_text())} == {"non_finite_output"}

    table = tmp_path / "out.csv"
    assert cli(photos_dir, "-a", "resnet18", "-w", bad, "-o", table).code == 1
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert len(rows) == len(PHOTOS) and {r["error_type"] for r in rows} == {"non_finite_output"}
    assert {r["probability"] for r in rows} == {""}


@pytest.mark.parametrize("fmt", ["jsonl", "npy"])
def test_a_non_finite_embedding_is_a_failure(checkpoint, photos_dir, cli, tmp_path, fmt):
    bad = broken(checkpoint("resnet18", num_classes=10), tmp_path, "layer4.1.bn2.bias", (0,), math.inf)
    out = tmp_path / f"vectors.{fmt}"
    res = cli("embed", photos_dir, "-a", "resnet18", "-w", bad, "-o", out, "--normalize")
    assert res.code == 1
    assert "non_finite_output" in res.stderr
    if fmt == "jsonl":
        records = [strict(line) for line in out.read_text().splitlines()]
        assert len(records) == len(PHOTOS)
        assert {r["error"]["type"] for r in records} == {"non_finite_output"}
    else:
        import numpy as np

        assert np.load(out).shape == (0, 512)


def test_a_finite_model_still_embeds_and_classifies(checkpoint, photos_dir, cli, tmp_path):
    good = checkpoint("resnet18", num_classes=10)
    res = cli(photos_dir, "-a", "resnet18", "-w", good, "-f", "jsonl")
    assert res.code == 0 and all("topk" in strict(line) for line in res.text.splitlines())
    out = tmp_path / "v.jsonl"
    assert cli("embed", photos_dir, "-a", "resnet18", "-w", good, "-o", out).code == 0
    assert all(len(strict(line)["embedding"]) == 512 for line in out.read_text().splitlines())


def test_json_writers_refuse_nan_as_a_safety_net():
    from resnet_cli.core.records import Prediction, Success
    from resnet_cli.outputs.writers import dumps

    rec = Success("a.jpg", "resnet18", "w", 256, 224, (Prediction(1, 0, "x", math.nan),))
    with pytest.raises(ValueError):
        dumps(rec.to_dict())
