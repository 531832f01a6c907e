"""The product's promise: on real photos, every architecture gives torchvision's answer.

Reference = torchvision's builder + `weights.transforms()` + softmax, on the same seeded checkpoint saved in
torchvision's layout. The CLI must give the same top-5 indices, probabilities within 1e-4, in jsonl and json.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from PIL import Image

from checkpoints import PHOTOS
from resnet_cli.models import registry

ARCHS = list(registry.architectures())


def reference(arch: str, ckpt) -> dict[str, tuple[list[int], list[float]]]:
    model = torchvision.models.get_model(arch, weights=None)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tf = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    out = {}
    with torch.inference_mode():
        for p in PHOTOS:
            probs = model(tf(Image.open(p).convert("RGB")).unsqueeze(0)).softmax(dim=1)[0]
            values, indices = probs.topk(5)
            out[p.name] = (indices.tolist(), values.tolist())
    return out


def check(records: list[dict], ref: dict, arch: str, ckpt) -> None:
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == [p.name for p in PHOTOS]
    labels = registry.categories()
    for r in records:
        indices, probs = ref[r["path"].rsplit("/", 1)[-1]]
        assert r["arch"] == arch and r["weights"] == str(ckpt)
        assert [t["index"] for t in r["topk"]] == indices, r["path"]
        assert [t["rank"] for t in r["topk"]] == [1, 2, 3, 4, 5]
        assert [t["label"] for t in r["topk"]] == [labels[i] for i in indices]
        for t, p in zip(r["topk"], probs):
            assert abs(t["probability"] - p) <= 1e-4, (r["path"], t, p)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_agrees_with_torchvision_in_jsonl_and_json(arch, checkpoint, cli, tmp_path):
    ckpt = checkpoint(arch)
    ref = reference(arch, ckpt)
    files = [str(p) for p in PHOTOS]

    res = cli(*files, "--arch", arch, "--weights", ckpt, "--format", "jsonl")
    assert res.code == 0, res.stderr
    check(res.jsonl(), ref, arch, ckpt)

    out = tmp_path / "preds.json"
    res = cli(*files, "--arch", arch, "--weights", ckpt, "--format", "json", "--output", out, "--batch-size", "4")
    assert res.code == 0, res.stderr
    assert res.stdout == b""
    check(json.loads(out.read_text()), ref, arch, ckpt)
