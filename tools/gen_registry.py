"""Regenerate resnet_cli/data/registry.json from the installed torchvision (and timm, for the WordNet ids).

The registry is data in the project so that the classify path never imports torchvision (3.7 s with torch).
tests/models/test_registry.py proves the file equals torchvision's weights enums field by field; run this script
only when torchvision publishes new weights, then re-run that test:

    python tools/gen_registry.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torchvision
from torchvision.models import get_model_builder, get_model_weights
from torchvision.models import resnet as tv_resnet
from torchvision.models.quantization import resnet as tv_quantized
from torchvision.transforms import InterpolationMode

ARCHITECTURES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]

# torchvision's int8 weights (post-training quantized, for the fbgemm engine), by the float architecture they
# quantize. Their enums live in torchvision.models.quantization and have no builder name of their own.
QUANTIZED = {
    "resnet18": tv_quantized.ResNet18_QuantizedWeights,
    "resnet50": tv_quantized.ResNet50_QuantizedWeights,
    "resnext101_32x8d": tv_quantized.ResNeXt101_32X8D_QuantizedWeights,
    "resnext101_64x4d": tv_quantized.ResNeXt101_64X4D_QuantizedWeights,
}

OUT = Path(__file__).resolve().parent.parent / "resnet_cli" / "data" / "registry.json"


def arch_config(name: str) -> dict:
    """Read the block type, depth and width of an architecture off a torchvision model."""
    model = get_model_builder(name)(weights=None)
    first = model.layer1[0]
    block = "bottleneck" if isinstance(first, tv_resnet.Bottleneck) else "basic"
    layers = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    if block == "bottleneck":
        groups = first.conv2.groups
        width_per_group = first.conv2.out_channels // groups  # layer1: width = base_width * groups
    else:
        groups, width_per_group = 1, 64
    return {"block": block, "layers": layers, "groups": groups, "width_per_group": width_per_group}


def weight_entry(w) -> dict:
    t = w.transforms()
    (resize,), (crop,) = t.resize_size, t.crop_size
    metrics = w.meta["_metrics"]["ImageNet-1K"]
    # torchvision's names end -<sha256 prefix>.pth; three older int8 files (resnet18_fbgemm_16fa66dd.pth, ...)
    # put the same 8 hex digits after an underscore.
    sha = re.search(r"[-_]([a-f0-9]{8,})\.pth$", w.url.rsplit("/", 1)[1]).group(1)
    entry = {
        "url": w.url,
        "sha256_prefix": sha,
        "resize": resize,
        "crop": crop,
        "mean": list(t.mean),
        "std": list(t.std),
        "interpolation": InterpolationMode(t.interpolation).value,
        "antialias": t.antialias,
        "acc@1": metrics["acc@1"],
        "acc@5": metrics["acc@5"],
        "num_params": w.meta["num_params"],
        "gflops": w.meta["_ops"],
        "file_size_mb": w.meta["_file_size"],
        "min_size": list(w.meta["min_size"]),
        "recipe": w.meta["recipe"],
    }
    if "backend" in w.meta:  # an int8 weight: the quantized engine it is made for and the float weights it quantizes
        entry["backend"] = w.meta["backend"]
        entry["unquantized"] = w.meta["unquantized"].name
    return entry


def wnids() -> list[str]:
    """The WordNet id of each ImageNet-1K class in class-index order, from the synset list timm ships (the
    order of the ILSVRC-2012 class folders, which is torchvision's class order)."""
    from timm.data import ImageNetInfo

    ids = list(ImageNetInfo("imagenet-1k").label_names())
    assert len(ids) == 1000 and all(i.startswith("n") for i in ids)
    return ids


def main() -> None:
    categories = None
    archs = {}
    for name in ARCHITECTURES:
        enum = get_model_weights(name)
        weights = {}
        for w in enum:
            if categories is None:
                categories = list(w.meta["categories"])
            assert list(w.meta["categories"]) == categories, f"{name}.{w.name}: other categories"
            weights[w.name] = weight_entry(w)
        archs[name] = {**arch_config(name), "enum": enum.__name__, "default": enum.DEFAULT.name, "weights": weights}
        if name in QUANTIZED:
            qenum = QUANTIZED[name]
            for w in qenum:
                assert list(w.meta["categories"]) == categories, f"{qenum.__name__}.{w.name}: other categories"
                assert w.meta["unquantized"].name in weights
            archs[name]["quantized"] = {"enum": qenum.__name__, "default": qenum.DEFAULT.name,
                                        "weights": {w.name: weight_entry(w) for w in qenum}}
    data = {"torchvision": torchvision.__version__.split("+")[0], "categories": categories, "wnids": wnids(),
            "architectures": archs}
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    count = sum(len(a["weights"]) + len(a.get("quantized", {}).get("weights", {})) for a in archs.values())
    print(f"wrote {OUT}: {len(archs)} architectures, {count} weights")


if __name__ == "__main__":
    main()
