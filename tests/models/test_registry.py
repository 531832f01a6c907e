"""The registry is data in the project; these tests keep it equal to torchvision's weights enums."""

from __future__ import annotations

import re

import pytest
import torchvision
from torchvision.models import get_model_weights
from torchvision.transforms import InterpolationMode

from resnet_cli.models import registry, resolve
from resnet_cli.core.errors import UsageError

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
         "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


def test_registry_lists_exactly_the_ten_architectures():
    assert list(registry.architectures()) == ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_every_published_weight_matches_torchvision_field_by_field(arch):
    spec = registry.get_arch(arch)
    enum = get_model_weights(arch)
    assert spec.enum == enum.__name__
    assert spec.default == enum.DEFAULT.name
    assert list(spec.weights) == [w.name for w in enum]
    for w in enum:
        ours = spec.weights[w.name]
        t = w.transforms()
        assert ours.url == w.url
        assert re.search(rf"-{ours.sha256_prefix}\.pth$", w.url)
        assert ours.file_name == w.url.rsplit("/", 1)[1]
        assert [ours.preprocess.resize] == t.resize_size
        assert [ours.preprocess.crop] == t.crop_size
        assert list(ours.preprocess.mean) == t.mean
        assert list(ours.preprocess.std) == t.std
        assert ours.preprocess.interpolation == InterpolationMode(t.interpolation).value
        assert ours.acc1 == w.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        assert ours.acc5 == w.meta["_metrics"]["ImageNet-1K"]["acc@5"]
        assert ours.num_params == w.meta["num_params"]
        assert ours.gflops == w.meta["_ops"]
        assert ours.file_size_mb == w.meta["_file_size"]
        assert ours.recipe == w.meta["recipe"]
        assert registry.categories() == tuple(w.meta["categories"])


def test_categories_are_the_1000_imagenet_names():
    cats = registry.categories()
    assert len(cats) == 1000 and cats[0] == "tench" and cats[-1] == "toilet tissue"


@pytest.mark.parametrize("name, expected", [
    ("DEFAULT", "IMAGENET1K_V2"),
    ("default", "IMAGENET1K_V2"),
    ("IMAGENET1K_V1", "IMAGENET1K_V1"),
    ("ResNet50_Weights.IMAGENET1K_V1", "IMAGENET1K_V1"),
    ("ResNet50_Weights.DEFAULT", "IMAGENET1K_V2"),
])
def test_weight_names_resolve_as_torchvision_resolves_them(name, expected):
    assert resolve.published(registry.get_arch("resnet50"), name).name == expected
    if "." in name:
        assert torchvision.models.ResNet50_Weights[name.split(".")[1]].name == expected


def test_weights_of_another_architecture_are_refused_with_the_right_arch_named():
    with pytest.raises(UsageError, match="use --arch resnet18"):
        resolve.resolve("resnet50", "ResNet18_Weights.IMAGENET1K_V1")


def test_a_weight_resnet18_does_not_publish_is_refused_with_what_it_has():
    with pytest.raises(UsageError, match="IMAGENET1K_V1"):
        resolve.resolve("resnet18", "IMAGENET1K_V2")


def test_unknown_architecture_suggests_the_closest():
    with pytest.raises(UsageError, match="did you mean resnet50"):
        registry.get_arch("resnet5O")
    with pytest.raises(UsageError, match="did you mean wide_resnet50_2"):
        registry.get_arch("wide-resnet50")


def test_the_weights_name_alone_picks_the_architecture():
    assert resolve.resolve(None, "Wide_ResNet101_2_Weights.IMAGENET1K_V2").arch.name == "wide_resnet101_2"
    assert resolve.resolve(None, "IMAGENET1K_V2").arch.name == "resnet50"  # a bare name: the default arch


def test_wordnet_ids_are_timms_imagenet_synsets_in_class_order():
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    assert registry.wnids() == tuple(info.label_names())
    assert registry.wnids()[285] == "n02124075" and registry.categories()[285] == "Egyptian cat"
