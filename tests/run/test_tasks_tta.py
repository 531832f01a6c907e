"""--tta, horizontal-flip test-time augmentation: torchvision's answer (the mean of the softmax of the crop and
of its mirror image), the same bytes whatever the batch, and a record of its own kind for --resume."""

from __future__ import annotations

import json
import shutil

import pytest

from checkpoints import PHOTOS


def test_tta_equals_the_mean_of_torchvisions_softmax_of_the_crop_and_its_mirror(checkpoint, cli):
    import torch
    import torchvision
    from PIL import Image

    ckpt = checkpoint("resnet18")
    res = cli(*map(str, PHOTOS), "-a", "resnet18", "-w", str(ckpt), "--tta", "-f", "jsonl")
    assert res.code == 0, res.stderr
    plain = cli(*map(str, PHOTOS), "-a", "resnet18", "-w", str(ckpt), "-f", "jsonl").jsonl()
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tf = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    differs = 0
    for rec, old, path in zip(res.jsonl(), plain, PHOTOS):
        x = tf(Image.open(path).convert("RGB"))[None]
        with torch.no_grad():
            p = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1)) / 2
        v, i = p[0].topk(5)
        assert [t["index"] for t in rec["topk"]] == i.tolist(), path.name
        assert [t["probability"] for t in rec["topk"]] == pytest.approx(v.tolist(), abs=1e-4)
        differs += rec["topk"] != old["topk"]
    assert differs  # the augmentation changed something: it did run


def test_tta_records_do_not_depend_on_the_batch(checkpoint, cli, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in PHOTOS:
        shutil.copy(p, folder / p.name)
    ckpt = str(checkpoint("resnet18"))
    whole = cli(str(folder), "-a", "resnet18", "-w", ckpt, "--tta", "-f", "jsonl", "-b", "3").text.splitlines()
    for i, p in enumerate(sorted(folder.iterdir())):
        alone = cli(str(p), "-a", "resnet18", "-w", ckpt, "--tta", "-f", "jsonl").text.splitlines()
        assert alone == [whole[i]]


def test_evaluate_with_tta_scores_the_averaged_predictions(checkpoint, cli, tmp_path):
    ckpt = str(checkpoint("resnet18"))
    top1 = cli(str(PHOTOS[0]), "-a", "resnet18", "-w", ckpt, "--tta", "-f", "jsonl").jsonl()[0]["topk"][0]["label"]
    (tmp_path / "data" / top1).mkdir(parents=True)
    shutil.copy(PHOTOS[0], tmp_path / "data" / top1 / PHOTOS[0].name)
    res = cli("evaluate", str(tmp_path / "data"), "-a", "resnet18", "-w", ckpt, "--tta", "-f", "json")
    assert res.code == 0, res.stderr
    assert json.loads(res.text)["top1"] == 1.0


def test_a_tta_file_resumes_only_with_tta(checkpoint, cli, tmp_path):
    """Resume checks a kept record by computing it again: a --tta file cannot be continued without --tta (the
    two kinds of record never mix in one file), and continues byte for byte with it."""
    ckpt = str(checkpoint("resnet18"))
    photos = [str(p) for p in PHOTOS[:3]]
    out = tmp_path / "tta.jsonl"
    assert cli(*photos, "-a", "resnet18", "-w", ckpt, "--tta", "-o", out).code == 0
    whole = out.read_bytes()
    out.write_bytes(b"".join(whole.splitlines(keepends=True)[:1]))  # as if stopped after the first record
    partial = out.read_bytes()
    refused = cli(*photos, "-a", "resnet18", "-w", ckpt, "-o", out, "--resume")
    assert refused.code == 2 and out.read_bytes() == partial
    assert cli(*photos, "-a", "resnet18", "-w", ckpt, "--tta", "-o", out, "--resume").code == 0
    assert out.read_bytes() == whole
