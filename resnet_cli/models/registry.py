"""The registry: every ResNet-family architecture and every torchvision ImageNet-1K weight for it.

The data lives in `data/registry.json`, generated from torchvision by `tools/gen_registry.py` and proven equal
to torchvision's weights enums by `tests/models/test_registry.py`. Reading it needs neither torch nor torchvision,
so `models`, `--help` and error messages are instant.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from importlib import resources

from ..core.errors import UsageError



@dataclass(frozen=True)
class Preprocess:
    """What `weights.transforms()` does: resize the shorter side, center-crop, scale to [0, 1], normalize."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class WeightsSpec:
    arch: str
    enum: str  # torchvision's enum class name, e.g. "ResNet50_Weights"
    name: str  # e.g. "IMAGENET1K_V2"
    url: str
    sha256_prefix: str
    preprocess: Preprocess
    acc1: float
    acc5: float
    num_params: int
    gflops: float
    file_size_mb: float
    recipe: str
    backend: str | None = None  # int8 weights: the quantized engine they are made for ("fbgemm"); None: float
    unquantized: str | None = None  # int8 weights: the name of the float weights they quantize (IMAGENET1K_V1)

    @property
    def quantized(self) -> bool:
        """Whether these are int8 weights (torchvision.models.quantization's), run by models/quantized.py."""
        return self.backend is not None

    @property
    def full_name(self) -> str:
        return f"{self.enum}.{self.name}"

    @property
    def file_name(self) -> str:
        """The file name in torch's hub cache, exactly as torchvision names it."""
        return self.url.rsplit("/", 1)[1]


@dataclass(frozen=True)
class ArchSpec:
    name: str
    block: str  # "basic" or "bottleneck"
    layers: tuple[int, int, int, int]
    groups: int
    width_per_group: int
    enum: str
    default: str
    weights: dict[str, WeightsSpec]  # the float weights (`enum`'s members)
    # torchvision's int8 weights of this architecture (`quantized_enum`'s members, e.g. ResNet50_QuantizedWeights),
    # empty where torchvision publishes none
    quantized: dict[str, WeightsSpec] = field(default_factory=dict)
    quantized_enum: str | None = None
    quantized_default: str | None = None

    @property
    def default_weights(self) -> WeightsSpec:
        return self.weights[self.default]

    @property
    def all_weights(self) -> list[WeightsSpec]:
        """Every published weight of the architecture: the float ones, then the int8 ones."""
        return [*self.weights.values(), *self.quantized.values()]


@functools.lru_cache(maxsize=1)
def _data() -> dict:
    text = resources.files("resnet_cli").joinpath("data", "registry.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1K category names, in class-index order."""
    return tuple(_data()["categories"])


@functools.lru_cache(maxsize=1)
def wnids() -> tuple[str, ...]:
    """The WordNet id of each ImageNet-1K class (n01440764, ...), in class-index order."""
    return tuple(_data()["wnids"])


def _weights_spec(arch: str, enum: str, name: str, w: dict) -> WeightsSpec:
    pre = Preprocess(
        resize=w["resize"],
        crop=w["crop"],
        mean=tuple(w["mean"]),
        std=tuple(w["std"]),
        interpolation=w["interpolation"],
    )
    return WeightsSpec(
        arch=arch,
        enum=enum,
        name=name,
        url=w["url"],
        sha256_prefix=w["sha256_prefix"],
        preprocess=pre,
        acc1=w["acc@1"],
        acc5=w["acc@5"],
        num_params=w["num_params"],
        gflops=w["gflops"],
        file_size_mb=w["file_size_mb"],
        recipe=w["recipe"],
        backend=w.get("backend"),
        unquantized=w.get("unquantized"),
    )


@functools.lru_cache(maxsize=1)
def architectures() -> dict[str, ArchSpec]:
    """All architectures, in the registry's order (by family, then depth)."""
    out = {}
    for name, a in _data()["architectures"].items():
        weights = {wn: _weights_spec(name, a["enum"], wn, w) for wn, w in a["weights"].items()}
        q = a.get("quantized") or {}
        quantized = {wn: _weights_spec(name, q["enum"], wn, w) for wn, w in q.get("weights", {}).items()}
        out[name] = ArchSpec(
            name=name,
            block=a["block"],
            layers=tuple(a["layers"]),
            groups=a["groups"],
            width_per_group=a["width_per_group"],
            enum=a["enum"],
            default=a["default"],
            weights=weights,
            quantized=quantized,
            quantized_enum=q.get("enum"),
            quantized_default=q.get("default"),
        )
    return out


def suggest(word: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.5)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f" (did you mean {original}?)"


def get_arch(name: str) -> ArchSpec:
    archs = architectures()
    key = name.strip().lower().replace("-", "_")
    if key in archs:
        return archs[key]
    raise UsageError(f"unknown architecture {name!r}{suggest(key, archs)}; known: {', '.join(archs)}")
