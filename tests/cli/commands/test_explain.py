"""`explain` against pytorch-grad-cam on torchvision's model with the same checkpoint, and its files.

The oracle: the `grad-cam` package's GradCAM, GradCAMPlusPlus and LayerCAM with `target_layers=[block]` on
torchvision's resnet, fed `weights.transforms()` of each image, in one batch of mixed images (different sizes,
aspect ratios, a PNG, JPEGs, an EXIF-rotated photo), with the target classes explain reports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from checkpoints import PHOTOS

TOL = 1e-3


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Ten images of different sizes and kinds: the sample photos, a mirrored and cropped copy, a large one,
    a tall thin one, and a photo stored sideways with an EXIF orientation."""
    from corpus import exif_rotated_jpeg

    folder = tmp_path_factory.mktemp("mixed")
    for p in PHOTOS:
        shutil.copy(p, folder / p.name)
    img = Image.open(PHOTOS[0]).convert("RGB")
    ImageOps.mirror(img).crop((30, 10, 400, 300)).save(folder / "mirrored.jpg", quality=90)
    img.resize((1800, 1350)).save(folder / "large.jpg", quality=90)
    img.resize((150, 420)).save(folder / "tall.png")
    (folder / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    return folder


def explain(cli, tmp_path, folder, ckpt, *args, arch="resnet18"):
    out = tmp_path / "out"
    result = cli("explain", folder, "--arch", arch, "--weights", ckpt, "--out", out, "-f", "jsonl", *args)
    assert result.code == 0, result.stderr
    return result.jsonl(), out


def grad_cam(arch: str, ckpt: Path, paths: list[str], block: str, method: str, targets: list[int]) -> np.ndarray:
    import torch
    import torchvision
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = torchvision.models.get_model(arch)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tf = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    x = torch.stack([tf(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) for p in paths])
    stage, index = block.split(".")
    layer = getattr(model, stage)[int(index)]
    cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}[method]
    with cls(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


@pytest.mark.parametrize("layer,block", [("layer4", "layer4.1"), ("layer3.0", "layer3.0")])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_maps_equal_pytorch_grad_cam_on_torchvisions_model(mixed, checkpoint, cli, tmp_path, method, layer, block):
    ckpt = checkpoint("resnet18")
    records, out = explain(cli, tmp_path, mixed, ckpt, "--method", method, "--layer", layer, "--maps")
    assert len(records) == 10
    paths = [r["path"] for r in records]
    targets = [r["explanation"]["target"]["index"] for r in records]
    assert targets == [r["topk"][0]["index"] for r in records]  # the default target is the top-1
    ours = np.stack([np.load(r["explanation"]["map"]) for r in records])
    assert ours.dtype == np.float32 and ours.shape == (10, 224, 224)
    reference = grad_cam("resnet18", ckpt, paths, block, method, targets)
    assert np.abs(ours - reference).max() < TOL
    for r in records:
        assert r["explanation"]["method"] == method and r["explanation"]["layer"] == block
        assert r["explanation"]["target"]["probability"] == r["topk"][0]["probability"]
        assert Path(r["explanation"]["overlay"]).is_file()


def test_a_bottleneck_networks_maps_equal_pytorch_grad_cam(mixed, checkpoint, cli, tmp_path):
    ckpt = checkpoint("resnet50")
    records, _ = explain(cli, tmp_path, mixed, ckpt, "--method", "gradcam++", "--maps", arch="resnet50")
    ours = np.stack([np.load(r["explanation"]["map"]) for r in records])
    reference = grad_cam("resnet50", ckpt, [r["path"] for r in records], "layer4.2", "gradcam++",
                         [r["explanation"]["target"]["index"] for r in records])
    assert np.abs(ours - reference).max() < TOL


def test_records_are_classifys_records_to_the_byte_plus_the_explanation(mixed, checkpoint, cli, tmp_path):
    ckpt = checkpoint("resnet18")
    (mixed_bad := tmp_path / "with_bad").mkdir()
    for p in sorted(mixed.iterdir()):
        shutil.copy(p, mixed_bad / p.name)
    (mixed_bad / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    explained = cli("explain", mixed_bad, "--arch", "resnet18", "--weights", ckpt, "--out", out, "-f",
                    "jsonl")
    classified = cli(mixed_bad, "--arch", "resnet18", "--weights", ckpt, "-f", "jsonl")
    assert explained.code == classified.code == 1  # one input failed; the others are all there, in order
    lines = explained.text.splitlines()
    assert len(lines) == len(classified.text.splitlines()) == 11
    for ours, theirs in zip(lines, classified.text.splitlines()):
        record = json.loads(ours)
        if "error" in record:
            assert ours == theirs
            continue
        explanation = record.pop("explanation")
        assert json.dumps(record) == json.dumps(json.loads(theirs))
        assert explanation["map"] is None
    assert "broken.jpg" in explained.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.stem + ".png" for p in mixed_bad.iterdir() if p.name != "broken.jpg")


def test_overlay_is_the_photo_as_seen_with_the_map_where_the_crop_came_from(mixed, checkpoint, cli, tmp_path):
    from resnet_cli.outputs.overlay import jet

    ckpt = checkpoint("resnet18")
    records, out = explain(cli, tmp_path, mixed, ckpt, "--maps")
    by_name = {Path(r["path"]).name: r for r in records}

    # A large photo is drawn at 1024 px on its longer side; a sideways-stored one upright, as viewers show it.
    large = Image.open(by_name["large.jpg"]["explanation"]["overlay"])
    assert large.size == (1024, 768) and large.format == "PNG"
    stored = Image.open(mixed / "rotated.jpg")
    upright = ImageOps.exif_transpose(stored)
    assert stored.size[::-1] == upright.size
    assert Image.open(by_name["rotated.jpg"]["explanation"]["overlay"]).size == upright.size

    # torchvision's geometry (resize the shorter side to 256, centre crop 224), in the 1024 px view's pixels
    new_w = int(256 * 1800 / 1350)
    crop_left, crop_top = int(round((new_w - 224) / 2.0)), int(round((256 - 224) / 2.0))
    left, top = crop_left * 1024 / new_w, crop_top * 768 / 256
    box_w, box_h = 224 * 1024 / new_w, 224 * 768 / 256
    photo = np.asarray(Image.open(mixed / "large.jpg").convert("RGB").resize((1024, 768), Image.BILINEAR),
                       dtype=np.float32)
    drawn = np.asarray(large, dtype=np.float32)
    margin = int(left) - 2
    assert np.abs(drawn[:, :margin] - photo[:, :margin] / 3).mean() < 3  # outside the crop: dimmed to a third
    assert np.abs(drawn[:, -margin:] - photo[:, -margin:] / 3).mean() < 3
    cam = np.load(by_name["large.jpg"]["explanation"]["map"])
    heat = np.zeros_like(photo)
    x0, y0 = round(left), round(top)
    heat[y0:y0 + round(box_h), x0:x0 + round(box_w)] = np.asarray(
        Image.fromarray(jet(cam)).resize((round(box_w), round(box_h)), Image.BILINEAR), dtype=np.float32)
    inside = (slice(y0 + 4, y0 + round(box_h) - 4), slice(x0 + 4, x0 + round(box_w) - 4))
    # inside: half photo, half the map in jet colours
    assert np.abs(drawn[inside] - (0.5 * photo[inside] + 0.5 * heat[inside])).mean() < 3
    # jet: blue for nothing, green half way, red where the class was found
    low, mid, high = jet(np.array([0.0, 0.5, 1.0], dtype=np.float32)).astype(int)
    assert low.argmax() == 2 and mid.argmax() == 1 and high.argmax() == 0


def test_overlays_are_named_after_their_inputs_without_collisions(checkpoint, cli, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(PHOTOS[0], tmp_path / folder / "dog.jpg")
    shutil.copy(PHOTOS[1], tmp_path / "a" / "DOG.png")
    out = tmp_path / "explanations"
    (out).mkdir()
    (out / "dog.png").write_bytes(b"an earlier run's file, replaced")
    result = cli("explain", tmp_path / "a" / "dog.jpg", tmp_path / "b" / "dog.jpg", tmp_path / "a" / "DOG.png",
                 "--arch", "resnet18", "--weights", checkpoint("resnet18"), "--out", out, "-f", "jsonl")
    assert result.code == 0, result.stderr
    overlays = [r["explanation"]["overlay"] for r in result.jsonl()]
    assert [Path(p).name for p in overlays] == ["dog.png", "dog-2.png", "DOG-3.png"]
    for p in overlays:
        Image.open(p).verify()
    assert sorted(p.name for p in out.iterdir()) == ["DOG-3.png", "dog-2.png", "dog.png"]  # no temporary left


def test_a_class_chosen_by_name_or_index_is_explained(mixed, checkpoint, cli, tmp_path):
    ckpt = checkpoint("resnet18")
    by_name, _ = explain(cli, tmp_path, mixed, ckpt, "--target", "Tabby", "--topk", "1000", "--maps")
    by_wnid, _ = explain(cli, tmp_path, mixed, ckpt, "--target", "n02123045", "--maps")
    for r in by_name:
        target = r["explanation"]["target"]
        assert (target["index"], target["label"]) == (281, "tabby")
        assert target["probability"] == next(p["probability"] for p in r["topk"] if p["index"] == 281)
    assert [r["explanation"]["target"] for r in by_name] == [r["explanation"]["target"] for r in by_wnid]


def test_bad_layer_and_target_are_usage_errors_naming_the_valid_choices(mixed, checkpoint, cli, tmp_path):
    ckpt = checkpoint("resnet18")
    result = cli("explain", mixed, "--arch", "resnet18", "--weights", ckpt, "--layer", "layer5",
                 "--out", tmp_path / "o")
    assert result.code == 2
    assert "layer5" in result.stderr and "layer1, layer2, layer3, layer4" in result.stderr
    assert "layer1.0" in result.stderr and "layer4.1" in result.stderr
    result = cli("explain", mixed, "--arch", "resnet18", "--weights", ckpt, "--target", "not a class at all",
                 "--out", tmp_path / "o")
    assert result.code == 2 and "--target" in result.stderr
    result = cli("explain", mixed, "--arch", "resnet18", "--weights", ckpt, "--out", PHOTOS[0])
    assert result.code == 2 and "is a file" in result.stderr
