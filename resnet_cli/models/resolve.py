"""Which network a run uses: `--arch`, `--weights`, `--resize` and `--crop` resolved into one value.

In the spirit of torchvision's `get_weight` and timm's `resolve_data_config`, in layers: the explicit option,
then what the weights say, then the default.

- `--weights` is a published name when it is one of the registry's: DEFAULT, a name (IMAGENET1K_V2) or an
  enum-qualified name (ResNet50_Weights.IMAGENET1K_V2, which also names the architecture), whatever files the
  working directory holds (a file called DEFAULT is reached as ./DEFAULT). Anything else is a checkpoint
  file, which must be a regular file (a FIFO or a device is refused without being opened).
- torchvision's int8 weights (ResNet50_QuantizedWeights.IMAGENET1K_FBGEMM_V2, ...) are names of the same
  architecture: their names (IMAGENET1K_FBGEMM_V1) are never those of float weights, so the short name is
  enough; DEFAULT is always the float default, ResNet50_QuantizedWeights.DEFAULT the int8 one.
- The architecture: `--arch`, else the one an enum-qualified name belongs to, else the one a checkpoint's
  shapes identify (block type, blocks per stage, groups and width), else resnet50. A checkpoint whose shapes
  identify another architecture than `--arch` is a usage error that names the one it fits.
- Preprocessing: the published weights' own (their `weights.transforms()`); a checkpoint gets the
  architecture's DEFAULT weights'. `--resize`/`--crop` override it; the one not given keeps the crop-to-resize
  ratio (224/256 for V1 weights), so `--crop 320` alone keeps the framing the weights were evaluated with.
- A model `resnet-classify train` wrote (a .safetensors file with this tool's metadata) names its own
  architecture, preprocessing and class names: it needs no --arch and no --labels. Metadata that is malformed
  (not an object, a field missing or of the wrong type, a size out of bounds) is a usage error naming the file
  and the field.
- A model `resnet-classify export` wrote (`.onnx`, or an OpenVINO `.xml`; formats.kind_of decides by the
  extension) names the same in its own metadata (formats.py) and is run by its runtime (`Resolved.runtime`).
  Its crop is the graph's: `--crop` may not change it, `--resize` may.
- Sizes are bounded: resize at most MAX_RESIZE and crop at most MAX_CROP pixels, whether from the options or
  a model's metadata.

No torch, no I/O beyond a file's status and a checkpoint's header: decoding can start before torch is
imported.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, replace

from ..core.errors import UsageError
from .registry import ArchSpec, Preprocess, WeightsSpec, architectures, get_arch, suggest
from .state_dicts import MAX_CLASSES

DEFAULT_ARCH = "resnet50"
MAX_RESIZE = 2048  # pixels, the shorter side after resizing (--resize, a model's metadata)
MAX_CROP = 1024  # pixels, the side of the square the network sees: at 1024 a resnet50 needs ~1 GB an image
MAX_METADATA_BYTES = 64 << 20  # the JSON a trained model's header carries
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")  # preprocess.py's filters


@dataclass(frozen=True)
class Resolved:
    """What a run classifies with. Travels whole: into the engines, the records and `--resume`'s checks."""

    arch: ArchSpec
    spec: WeightsSpec | None  # published weights, or None for a checkpoint file
    name: str  # the published full name (ResNet50_Weights.IMAGENET1K_V2) or the checkpoint path
    preprocess: Preprocess
    labels: tuple[str, ...] | None = None  # the class names a trained or exported model carries
    labels_file: str | None = None  # --labels: a file of class names, read when the model is loaded
    runtime: str = "torch"  # what runs it: "torch", or an exported file's "onnx" / "openvino" (formats.py)

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
    read from the file's header without torch (safetensors checks the header against the file first); None
    for any other file. Raises UsageError, naming the file and the field, for a header safetensors refuses or
    for metadata that is malformed or out of bounds (`check_metadata`)."""
    if not path.endswith(".safetensors"):
        return None
    from .state_dicts import open_safetensors

    with open_safetensors(path) as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    return None if raw is None else parse_metadata(path, raw)


def exported_metadata(path: str, kind: str) -> dict:
    """The metadata of an exported model file (formats.py: an .onnx file's metadata_props, an OpenVINO IR's
    rt_info), checked as a trained model's (`check_metadata`). Raises UsageError naming the file: a file its
    format's reader refuses, no metadata (a file this tool did not export), malformed or oversized metadata."""
    from .formats import RUNTIME_NAMES, raw_metadata

    raw = raw_metadata(path, kind, MAX_METADATA_BYTES)
    if raw is None:
        raise UsageError(f"model {path}: no {METADATA_KEY!r} metadata (labels, preprocessing) in this "
                         f"{RUNTIME_NAMES[kind]} model; make it with resnet-classify export")
    return parse_metadata(path, raw)


def parse_metadata(path: str, raw: str) -> dict:
    """The metadata JSON string `raw` of the model at `path`, parsed and checked (`check_metadata`)."""
    import json

    if len(raw) > MAX_METADATA_BYTES:
        raise UsageError(f"model {path}: its metadata {METADATA_KEY!r} is over {MAX_METADATA_BYTES >> 20} MiB")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise UsageError(f"model {path}: its metadata {METADATA_KEY!r} is not JSON") from None
    return check_metadata(path, meta)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_metadata(path: str, meta) -> dict:
    """`meta` when it has the form `train` writes: {"arch": a known architecture, "labels": 1 to MAX_CLASSES
    strings, "preprocess": {"resize": 1..MAX_RESIZE, "crop": 1..MAX_CROP, "mean": 3 finite numbers, "std": 3
    positive finite numbers, "interpolation": one of INTERPOLATIONS}}, "base_weights" a string if present.
    Raises UsageError naming the file and the first field that is wrong."""
    def bad(field: str, why: str) -> UsageError:
        return UsageError(f"model {path}: metadata field {field!r} {why}")

    if not isinstance(meta, dict):
        raise UsageError(f"model {path}: its metadata {METADATA_KEY!r} is a {_kind(meta)}, not an object")
    for field in ("arch", "labels", "preprocess"):
        if field not in meta:
            raise bad(field, "is missing")
    if not isinstance(meta["arch"], str) or meta["arch"].strip().lower().replace("-", "_") not in architectures():
        raise bad("arch", f"names no known architecture ({_short(meta['arch'])}); known: {', '.join(architectures())}")
    if "base_weights" in meta and not isinstance(meta["base_weights"], str):
        raise bad("base_weights", f"is a {_kind(meta['base_weights'])}, not a string")
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise bad("labels", "is not a list of strings")
    if not 1 <= len(labels) <= MAX_CLASSES:
        raise bad("labels", f"has {len(labels):,} names; a model has 1 to {MAX_CLASSES:,} classes")
    pre = meta["preprocess"]
    if not isinstance(pre, dict):
        raise bad("preprocess", f"is a {_kind(pre)}, not an object")
    for field, top in (("resize", MAX_RESIZE), ("crop", MAX_CROP)):
        value = pre.get(field)
        if not _whole(value) or not 1 <= value <= top:
            raise bad(f"preprocess.{field}", f"is {_short(value)}; it must be a whole number from 1 to {top}")
    for field in ("mean", "std"):
        value = pre.get(field)
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                           for x in value)):
            raise bad(f"preprocess.{field}", f"is {_short(value)}; it must be 3 numbers, one a colour channel")
        if field == "std" and not all(x > 0 for x in value):
            raise bad("preprocess.std", f"is {_short(value)}; each must be above 0")
    if pre.get("interpolation") not in INTERPOLATIONS:
        raise bad("preprocess.interpolation", f"is {_short(pre.get('interpolation'))}; it must be one of "
                  f"{', '.join(INTERPOLATIONS)}")
    return meta


def _kind(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _short(value) -> str:
    """A JSON value as a message shows it: cut to 40 characters, control characters escaped."""
    import json

    text = json.dumps(value, ensure_ascii=True)  # control characters come out escaped
    return text if len(text) <= 40 else text[:37] + "..."


def _owner(weights: str) -> ArchSpec | None:
    """The architecture whose enum (float or int8) qualifies `weights` (ResNet50_Weights.X and
    ResNet50_QuantizedWeights.X -> resnet50), if any."""
    enum, dot, _ = weights.partition(".")
    if not dot or not enum:  # ./DEFAULT, .hidden: paths, not enums
        return None
    return next((a for a in architectures().values() if _enum_table(a, enum) is not None), None)


def _enum_table(arch: ArchSpec, enum: str) -> tuple[dict[str, WeightsSpec], str] | None:
    """(the weights, the DEFAULT name) of `arch`'s float or int8 enum called `enum`; None for another enum."""
    if enum.lower() == arch.enum.lower():
        return arch.weights, arch.default
    if arch.quantized_enum and enum.lower() == arch.quantized_enum.lower():
        return arch.quantized, arch.quantized_default
    return None


def _all_names() -> set[str]:
    return {"DEFAULT"} | {w.name for a in architectures().values() for w in a.all_weights}


def _is_published_name(weights: str) -> bool:
    """DEFAULT, a weights name the registry has (IMAGENET1K_V2, IMAGENET1K_FBGEMM_V1), or any enum-qualified
    form (whose errors then say what is wrong with it). A missing `best.ckpt` is thus a missing file, not an
    unknown weights name."""
    if weights.upper() in _all_names():
        return True
    enum, _, name = weights.partition(".")
    return enum.lower().endswith("weights") and bool(name)


def _is_registry_name(weights: str) -> bool:
    """DEFAULT, a weights name (IMAGENET1K_V2) or an enum-qualified one the registry has
    (ResNet50_Weights.IMAGENET1K_V2, ResNet50_Weights.DEFAULT, ResNet50_QuantizedWeights.DEFAULT): names that
    win over a file of that name."""
    if weights.upper() in _all_names():
        return True
    owner = _owner(weights)
    if owner is None:
        return False
    enum, _, name = weights.partition(".")
    table, _default = _enum_table(owner, enum)  # not None: _owner found the enum
    return name.upper() in ({"DEFAULT"} | set(table))


def _published_list(arch: ArchSpec) -> str:
    text = f"DEFAULT ({arch.default}), {', '.join(arch.weights)}"
    if arch.quantized:
        text += f"; int8: {', '.join(arch.quantized)}"
    return text


def _checkpoint_file(weights: str) -> bool:
    """Whether `weights` names a file; a usage error when it names something that is not a regular file (a
    FIFO would block the reading forever, a device never end). Only stat(): nothing is opened."""
    try:
        st = os.stat(weights)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if not os.path.lexists(weights):
            return False
        raise UsageError(f"checkpoint {weights}: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode):
        return True
    what = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or
            stat.S_ISBLK(st.st_mode) else "not a regular file")
    raise UsageError(f"checkpoint {weights}: {what}, not a checkpoint file (.pth, .pt or .safetensors)")


def published(arch: ArchSpec, weights: str) -> WeightsSpec:
    """The published weights `weights` of `arch`: DEFAULT (the float default, as torchvision's
    `ResNet50_Weights.DEFAULT`), a name of its float or int8 weights (the two enums share no name), or an
    enum-qualified name, whose enum picks the table: ResNet50_QuantizedWeights.DEFAULT is the int8 default."""
    name = weights
    table, default = arch.weights, arch.default
    if "." in weights:
        enum, name = weights.split(".", 1)
        found = _enum_table(arch, enum)
        if found is None:
            owner = _owner(weights)
            hint = f"; those are {owner.name}'s weights (use --arch {owner.name})" if owner else ""
            enums = arch.enum + (f" and {arch.quantized_enum}" if arch.quantized_enum else "")
            raise UsageError(f"weights {weights!r} do not belong to {arch.name} (its enums: {enums}){hint}")
        table, default = found
    name = name.upper()
    if name == "DEFAULT":
        return table[default]
    if name in table:
        return table[name]
    if "." not in weights and name in arch.quantized:
        return arch.quantized[name]
    names = list(table) + ([] if "." in weights else list(arch.quantized))
    raise UsageError(
        f"{arch.name} has no published weights {weights!r}{suggest(name, names)}; "
        f"published: {_published_list(arch)}"
    )


def _override(pre: Preprocess, resize: int | None, crop: int | None) -> Preprocess:
    for name, value, top in (("--resize", resize, MAX_RESIZE), ("--crop", crop, MAX_CROP)):
        if value is not None and not 1 <= value <= top:
            raise UsageError(f"{name} must be from 1 to {top} pixels (got {value})")
    if resize is None and crop is None:
        return pre
    if resize is None:
        resize = max(1, round(crop * pre.resize / pre.crop))
        if resize > MAX_RESIZE:
            raise UsageError(f"--crop {crop} keeps the weights' framing with a resize of {resize}, over the limit "
                             f"of {MAX_RESIZE}: give --resize too")
    if crop is None:
        crop = max(1, round(resize * pre.crop / pre.resize))
        if crop > MAX_CROP:
            raise UsageError(f"--resize {resize} keeps the weights' framing with a crop of {crop}, over the limit "
                             f"of {MAX_CROP}: give --crop too")
    return replace(pre, resize=resize, crop=crop)


def resolve(arch: str | None = None, weights: str = "DEFAULT", resize: int | None = None,
            crop: int | None = None, *, labels_file: str | None = None) -> Resolved:
    """The one reading of `--arch`/`--weights`/`--resize`/`--crop` (module docstring), with the --labels file
    the model's class names come from. Raises UsageError."""
    return replace(_resolve(arch, weights, resize, crop), labels_file=labels_file)


def _resolve(arch: str | None, weights: str, resize: int | None, crop: int | None) -> Resolved:
    is_name = _is_registry_name(weights)
    is_file = not is_name and _checkpoint_file(weights)
    if is_name or (not is_file and _is_published_name(weights)):
        owner = _owner(weights)
        spec_arch = get_arch(arch) if arch else (owner or get_arch(DEFAULT_ARCH))
        spec = published(spec_arch, weights)
        return Resolved(spec_arch, spec, spec.full_name, _override(spec.preprocess, resize, crop))
    from .formats import kind_of

    kind = kind_of(weights) if is_file else None
    meta = (exported_metadata(weights, kind) if kind else trained_metadata(weights)) if is_file else None
    if meta is not None:
        a = get_arch(meta["arch"])
        if arch and get_arch(arch).name != a.name:
            raise UsageError(f"{weights} is a {a.name} model; leave out --arch or give --arch {a.name}")
        p = meta["preprocess"]
        pre = Preprocess(p["resize"], p["crop"], tuple(p["mean"]), tuple(p["std"]), p["interpolation"])
        if kind and crop is not None and crop != pre.crop:
            raise UsageError(f"{weights} was exported for {pre.crop}-pixel crops; --crop cannot change that "
                             f"(give --resize alone, or export again with --crop)")
        if kind and resize is not None:
            crop = pre.crop  # --resize alone keeps the graph's crop, not the crop-to-resize ratio
        return Resolved(a, None, weights, _override(pre, resize, crop), tuple(meta["labels"]),
                        runtime=kind or "torch")
    if not is_file:
        a = get_arch(arch or DEFAULT_ARCH)
        if re.fullmatch(r"\w+", weights):  # a name, not a path: say what the names are
            raise UsageError(f"--weights {weights}: no such checkpoint file, and {a.name} has no published weights "
                             f"of that name{suggest(weights.upper(), [w.name for w in a.all_weights])}; "
                             f"published: {_published_list(a)}")
        raise UsageError(f"checkpoint {weights}: no such file")
    from .state_dicts import checkpoint_arch

    fits = checkpoint_arch(weights)  # from the header's shapes; None when they fit no known architecture
    a = get_arch(arch) if arch else (fits or get_arch(DEFAULT_ARCH))
    if fits is not None and fits.name != a.name:
        raise UsageError(f"checkpoint {weights} does not fit {a.name}: its shapes are those of {fits.name} "
                         f"(use --arch {fits.name}, or leave --arch out)")
    return Resolved(a, None, weights, _override(a.default_weights.preprocess, resize, crop))
