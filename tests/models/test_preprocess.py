"""Preprocessing is bit-identical to torchvision's `weights.transforms()`, without importing torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from PIL import Image

from checkpoints import PHOTOS
from resnet_cli.models import registry, resolve
from resnet_cli.models.preprocess import MAX_RESIZED_PIXELS, normalize, resize_and_crop

V1 = ("resnet50", "IMAGENET1K_V1", torchvision.models.ResNet50_Weights.IMAGENET1K_V1)  # resize 256
V2 = ("resnet50", "IMAGENET1K_V2", torchvision.models.ResNet50_Weights.IMAGENET1K_V2)  # resize 232


def ours(img: Image.Image, pre: registry.Preprocess) -> torch.Tensor:
    out = resize_and_crop(img, pre)
    assert out.size == (pre.crop, pre.crop)
    u8 = torch.frombuffer(bytearray(out.tobytes()), dtype=torch.uint8).view(1, pre.crop, pre.crop, 3)
    return normalize(u8, pre)[0]


def spec(arch: str, name: str) -> registry.Preprocess:
    return resolve.published(registry.get_arch(arch), name).preprocess


@pytest.mark.parametrize("weights", [V1, V2], ids=["V1", "V2"])
@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_real_photos_give_the_very_same_tensor(photo, weights):
    arch, name, tv = weights
    img = Image.open(photo).convert("RGB")
    assert torch.equal(ours(img, spec(arch, name)), tv.transforms()(img))


@pytest.mark.parametrize("size", [(1, 1), (3, 3000), (3000, 40), (40, 3000), (231, 232), (232, 232), (256, 256),
                                  (224, 224), (100, 100), (225, 4001), (9, 2000)])
def test_odd_sizes_give_the_very_same_tensor(size):
    img = Image.open(PHOTOS[0]).convert("RGB").resize(size)
    for arch, name, tv in (V1, V2):
        assert torch.equal(ours(img, spec(arch, name)), tv.transforms()(img)), (size, name)


@pytest.mark.parametrize("resize, crop", [(160, 128), (320, 288), (200, 224), (96, 300)])
def test_overridden_sizes_match_torchvision_including_zero_padding(resize, crop):
    from torchvision.transforms._presets import ImageClassification

    img = Image.open(PHOTOS[1]).convert("RGB")
    pre = registry.Preprocess(resize, crop, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ref = ImageClassification(crop_size=crop, resize_size=resize)(img)
    assert torch.equal(ours(img, pre), ref)


def test_extreme_strips_resample_only_the_crop_and_stay_within_one_level():
    """A 2x9000 strip would resize to 232x1,044,000 (~730 MB); only the crop is computed."""
    img = Image.open(PHOTOS[2]).convert("RGB").resize((2, 9000))
    pre = spec(*V2[:2])
    w, h = 232, int(232 * 9000 / 2)
    assert w * h > MAX_RESIZED_PIXELS
    diff = (ours(img, pre) - V2[2].transforms()(img)).abs().max().item()
    assert diff <= 1.01 / 255 / min(pre.std)  # at most one grey level out of 255
