"""Which network a run uses: `--arch`, `--weights`, `--resize` and `--crop` resolved into one value.

In the spirit of torchvision's `get_weight` and timm's `resolve_data_config`, in layers: the explicit option,
then what the weights say, then the default.

- `--weights` is a checkpoint file when such a file exists (a checkpoint may be called DEFAULT), else a
  published name: DEFAULT, a name (IMAGENET1K_V2) or an enum-qualified name (ResNet50_Weights.IMAGENET1K_V2,
  which also names the architecture). Anything else is a checkpoint path, reported missing as such.
- The architecture: `--arch`, else the one an enum-qualified name belongs to, else resnet50.
- Preprocessing: the published weights' own (their `weights.transforms()`); a checkpoint gets the
  architecture's DEFAULT weights'. `--resize`/`--crop` override it; the one not given keeps the crop-to-resize
  ratio (224/256 for V1 weights), so `--crop 320` alone keeps the framing the weights were evaluated with.
- A model `resnet-classify train` wrote (a .safetensors file with this tool's metadata) names its own
  architecture, preprocessing and class names: it needs no --arch and no --labels.

No torch, no I/O beyond a file-existence check: decoding can start before torch is imported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from .errors import UsageError
from .registry import ArchSpec, Preprocess, WeightsSpec, architectures, get_arch, suggest

DEFAULT_ARCH = "resnet50"


@dataclass(frozen=True)
class Resolved:
    """What a run classifies with. Travels whole: into the engines, the records and `--resume`'s checks."""

    arch: ArchSpec
    spec: WeightsSpec | None  # published weights, or None for a checkpoint file
    name: str  # the published full name (ResNet50_Weights.IMAGENET1K_V2) or the checkpoint path
    preprocess: Preprocess
    labels: tuple[str, ...] | None = None  # the class names a trained model carries
    labels_file: str | None = None  # --labels: a file of class names, read when the model is loaded

    @property
    def num_classes(self) -> int | None:
        """1000 for published weights, the labels' count for a trained model; None for a checkpoint until it
        is read (its head says)."""
        if self.labels is not None:
            return len(self.labels)
        return 1000 if self.spec is not None else None


METADATA_KEY = "resnet_classify"  # the safetensors metadata entry `train` writes: JSON


def trained_metadata(path: str) -> dict | None:
    """The metadata `train` stored in a .safetensors model ({"arch", "base_weights", "labels", "preprocess"}),
    read from the file's header without torch; None for any other file."""
    import json
    import struct

    if not path.endswith(".safetensors"):
        return None
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(size, 100_000_000)))
        return json.loads(header["__metadata__"][METADATA_KEY])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _owner(weights: str) -> ArchSpec | None:
    """The architecture whose enum qualifies `weights` (ResNet50_Weights.X -> resnet50), if any."""
    enum, dot, _ = weights.partition(".")
    if not dot:
        return None
    return next((a for a in architectures().values() if a.enum.lower() == enum.lower()), None)


def _is_published_name(weights: str) -> bool:
    """DEFAULT, a weights name the registry has (IMAGENET1K_V2), or any enum-qualified form (whose errors then
    say what is wrong with it). A missing `best.ckpt` is thus a missing file, not an unknown weights name."""
    names = {"DEFAULT"} | {w for a in architectures().values() for w in a.weights}
    if weights.upper() in names:
        return True
    enum, _, name = weights.partition(".")
    return enum.lower().endswith("_weights") and bool(name)


def published(arch: ArchSpec, weights: str) -> WeightsSpec:
    """The published weights `weights` (DEFAULT, a name or an enum-qualified name) of `arch`."""
    name = weights
    if "." in weights:
        enum, name = weights.split(".", 1)
        if enum.lower() != arch.enum.lower():
            owner = _owner(weights)
            hint = f"; those are {owner.name}'s weights (use --arch {owner.name})" if owner else ""
            raise UsageError(f"weights {weights!r} do not belong to {arch.name} (its enum is {arch.enum}){hint}")
    name = name.upper()
    if name == "DEFAULT":
        return arch.default_weights
    if name in arch.weights:
        return arch.weights[name]
    raise UsageError(
        f"{arch.name} has no published weights {weights!r}{suggest(name, list(arch.weights))}; "
        f"published: DEFAULT ({arch.default}), {', '.join(arch.weights)}"
    )


def _override(pre: Preprocess, resize: int | None, crop: int | None) -> Preprocess:
    for name, value in (("--resize", resize), ("--crop", crop)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1 (got {value})")
    if resize is None and crop is None:
        return pre
    if resize is None:
        resize = max(1, round(crop * pre.resize / pre.crop))
    if crop is None:
        crop = max(1, round(resize * pre.crop / pre.resize))
    return replace(pre, resize=resize, crop=crop)


def resolve(arch: str | None = None, weights: str = "DEFAULT", resize: int | None = None,
            crop: int | None = None, *, labels_file: str | None = None) -> Resolved:
    """The one reading of `--arch`/`--weights`/`--resize`/`--crop` (module docstring), with the --labels file
    the model's class names come from. Raises UsageError."""
    return replace(_resolve(arch, weights, resize, crop), labels_file=labels_file)


def _resolve(arch: str | None, weights: str, resize: int | None, crop: int | None) -> Resolved:
    is_file = os.path.exists(weights)
    if not is_file and _is_published_name(weights):
        owner = _owner(weights)
        spec_arch = get_arch(arch) if arch else (owner or get_arch(DEFAULT_ARCH))
        spec = published(spec_arch, weights)
        return Resolved(spec_arch, spec, spec.full_name, _override(spec.preprocess, resize, crop))
    meta = trained_metadata(weights) if is_file else None
    if meta is not None:
        a = get_arch(meta["arch"])
        if arch and get_arch(arch).name != a.name:
            raise UsageError(f"{weights} is a {a.name} model; leave out --arch or give --arch {a.name}")
        p = meta["preprocess"]
        pre = Preprocess(p["resize"], p["crop"], tuple(p["mean"]), tuple(p["std"]), p["interpolation"])
        return Resolved(a, None, weights, _override(pre, resize, crop), tuple(meta["labels"]))
    a = get_arch(arch or DEFAULT_ARCH)
    if not is_file:
        if re.fullmatch(r"\w+", weights):  # a name, not a path: say what the names are
            raise UsageError(f"--weights {weights}: no such checkpoint file, and {a.name} has no published weights "
                             f"of that name{suggest(weights.upper(), list(a.weights))}; published: DEFAULT "
                             f"({a.default}), {', '.join(a.weights)}")
        raise UsageError(f"checkpoint {weights}: no such file")
    return Resolved(a, None, weights, _override(a.default_weights.preprocess, resize, crop))
