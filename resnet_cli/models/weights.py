"""Finding, downloading and loading weights.

Published weights live where torchvision keeps them, `$TORCH_HOME/hub/checkpoints/<file name from the URL>`
(TORCH_HOME defaults to `$XDG_CACHE_HOME/torch`, then `~/.cache/torch`), so files a user already downloaded
through torchvision are reused and the other way round. A missing file is downloaded with a progress bar on
stderr, its SHA-256 checked against the prefix in its name, and renamed into place only when complete. A cached
file whose name torch.hub cannot check (HUB_HASH: three int8 files put the prefix after an underscore, so
torchvision downloads them unchecked) is checked again each time it is used.
`--offline` or RESNET_CLASSIFY_OFFLINE=1 never touches the network.

Checkpoint files are read by state_dicts.py (weights_only, every header bounded); this module fits them to an
architecture and names their classes.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..inputs import net
from ..core.console import progress_bar
from ..core.errors import OFFLINE_REASON, PROG, UsageError, WeightsUnavailable
from .registry import ArchSpec, WeightsSpec, categories
from .resolve import Resolved
from .state_dicts import MAX_CLASSES, checkpoint_shapes, head_classes, head_shape, infer_arch, read_state_dict

OFFLINE_ENV = "RESNET_CLASSIFY_OFFLINE"
HUB_HASH = re.compile(r"-([a-f0-9]*)\.")  # torch.hub.HASH_REGEX: the file names whose hash torch.hub checks


def offline_from_env() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def torch_home() -> Path:
    """torch.hub's rule, without importing torch."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.environ.get("TORCH_HOME", default)))


def checkpoints_dir() -> Path:
    return torch_home() / "hub" / "checkpoints"


def cached_file(spec: WeightsSpec) -> Path:
    return checkpoints_dir() / spec.file_name


def _unavailable(spec: WeightsSpec, why: str, checkpoint_hint: bool = True) -> WeightsUnavailable:
    dest = cached_file(spec)
    hint = ("\n  or classify with a local checkpoint: --weights PATH (.pth, .pt or .safetensors)"
            if checkpoint_hint else "")
    return WeightsUnavailable(
        f"weights {spec.full_name} are not in the cache and {why}.\n"
        f"  file:  {spec.file_name} ({spec.file_size_mb:.1f} MB, sha256 {spec.sha256_prefix}...)\n"
        f"  cache: {dest.parent}\n"
        f"  fetch by hand on a machine with network, then copy it into the cache:\n"
        f"    curl -L -o {dest} {spec.url}{hint}"
    )


def ensure_available(weights: Resolved, *, offline: bool) -> None:
    """Fail before any work starts when published weights are not cached and the network is off."""
    if weights.spec is not None and offline and not cached_file(weights.spec).is_file():
        raise _unavailable(weights.spec, OFFLINE_REASON)


def fetch(spec: WeightsSpec, *, offline: bool, quiet: bool = False, checkpoint_hint: bool = True) -> Path:
    """The cached checkpoint of published weights, downloading it first unless `offline`. `checkpoint_hint`:
    whether a failure suggests `--weights PATH` (advice for classifying, not for `download`)."""
    dest = cached_file(spec)
    if dest.is_file():
        if not HUB_HASH.search(spec.file_name):  # possibly downloaded by torchvision, which never checked it
            check_cached(spec, dest)
        return dest
    if offline:
        raise _unavailable(spec, OFFLINE_REASON, checkpoint_hint)
    if not quiet:
        print(f"{PROG}: downloading {spec.full_name} ({spec.file_size_mb:.1f} MB) to {dest}", file=sys.stderr)
    try:
        if quiet or not sys.stderr.isatty():
            net.download(spec.url, dest, sha256_prefix=spec.sha256_prefix)
        else:
            with progress_bar(sys.stderr, unit="bytes") as progress:
                task = progress.add_task(spec.file_name, total=None)
                net.download(spec.url, dest, sha256_prefix=spec.sha256_prefix,
                             progress=lambda done, total: progress.update(task, completed=done, total=total))
    except net.NetworkError as exc:
        raise _unavailable(spec, f"downloading it failed: {exc}", checkpoint_hint) from None
    except OSError as exc:
        raise _unavailable(spec, f"it cannot be written there: {exc}", checkpoint_hint) from None
    return dest


def check_cached(spec: WeightsSpec, path: Path) -> None:
    """Raises WeightsUnavailable (exit 3) naming the file unless the SHA-256 of the cached `path` begins with
    `spec.sha256_prefix`, the hex digits of its published name."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise WeightsUnavailable(f"weights {spec.full_name}: cached file {path}: {exc.strerror or exc}") from None
    if not digest.hexdigest().startswith(spec.sha256_prefix):
        raise WeightsUnavailable(
            f"weights {spec.full_name}: hash mismatch in the cached file {path}: expected a sha256 beginning "
            f"{spec.sha256_prefix} (its published name's), got sha256 {digest.hexdigest()}; delete it to download "
            "it again (torchvision stores this file without checking it)")


def is_quantized(state_dict: dict) -> bool:
    """Whether a state dict is an int8 network's (torchvision's quantized layout: a packed quantized head)."""
    return "fc._packed_params._packed_params" in state_dict


def build_model(arch: ArchSpec, state_dict: dict, source: str):
    """The architecture with these weights, in eval mode: model.ResNet, or quantized.QuantizedResNet for an
    int8 state dict (`is_quantized`). The class count is read off the head's weight; a checkpoint that does not
    fit is a usage error naming the first key that differs."""
    import torch

    from .model import build

    if is_quantized(state_dict):
        from . import quantized

        return quantized.build(arch, state_dict, source)

    check_fit(arch, {k: tuple(v.shape) for k, v in state_dict.items()}, source)
    model = build(arch, num_classes=state_dict["fc.weight"].shape[0])
    state = dict(state_dict)
    for key in model.state_dict():
        if key not in state:  # num_batches_tracked: older checkpoints predate this buffer
            state[key] = torch.zeros((), dtype=torch.long)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def check_fit(arch: ArchSpec, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """A usage error naming the first key that differs when a state dict of these tensor shapes ({key: shape})
    does not fit `arch`; nothing is built but the architecture on the meta device (no memory, no weights)."""
    from .model import build

    fc = shapes.get("fc.weight")
    if fc is None or len(fc) != 2:
        raise UsageError(f"checkpoint {source} does not fit {arch.name}: it has no fc.weight head")
    _check_classes(source, fc[0])
    fits = infer_arch(shapes)
    hint = (f"; its shapes are those of {fits.name} (use --arch {fits.name})"
            if fits and fits.name != arch.name else "")
    expected = build(arch, num_classes=fc[0]).state_dict()
    for key, want in expected.items():
        got = shapes.get(key)
        if got is None and key.endswith("num_batches_tracked"):
            continue  # older checkpoints predate this buffer
        if got is None:
            raise UsageError(f"checkpoint {source} does not fit {arch.name}: missing key {key!r}{hint}")
        if tuple(got) != tuple(want.shape):
            raise UsageError(
                f"checkpoint {source} does not fit {arch.name}: {key!r} has shape {tuple(got)}, "
                f"{arch.name} needs {tuple(want.shape)}{hint}"
            )
    extra = [k for k in shapes if k not in expected]
    if extra:
        raise UsageError(f"checkpoint {source} does not fit {arch.name}: unexpected key {extra[0]!r}{hint}")


def check_checkpoint(arch: ArchSpec, path: str) -> None:
    """A usage error when the checkpoint at `path` does not fit `arch`, found from its tensors' shapes alone
    (`checkpoint_shapes`) where the file allows, else by reading it whole."""
    shapes = checkpoint_shapes(path)
    if shapes is None:
        shapes = {k: tuple(v.shape) for k, v in read_state_dict(path).items()}
    elif shapes and all(k.startswith("module.") for k in shapes):
        shapes = {k[len("module."):]: v for k, v in shapes.items()}
    check_fit(arch, shapes, path)


def class_names(weights: Resolved) -> tuple[str, ...]:
    """The names of the model's classes, as its records will give them: the --labels file's
    (`weights.labels_file`), else ImageNet's for published weights and 1000-class checkpoints, else class_N. A
    checkpoint without --labels is read to count its classes."""
    num_classes = weights.num_classes
    if num_classes is None:
        shape = head_shape(weights.name)
        if shape is None:  # a layout the quick reader does not know: read it whole
            fc = read_state_dict(weights.name).get("fc.weight")
            shape = None if fc is None else tuple(fc.shape)
        if shape is None or len(shape) != 2:
            raise UsageError(f"checkpoint {weights.name} does not fit {weights.arch.name}: it has no fc.weight head")
        num_classes = head_classes(shape[0])
        _check_classes(weights.name, num_classes)
    return _labels(num_classes, weights.labels_file, weights.labels)


def _check_classes(source: str, num_classes: int) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise UsageError(f"checkpoint {source}: its head (fc.weight) has {num_classes:,} classes; a model has 1 to "
                         f"{MAX_CLASSES:,}")


def _labels(num_classes: int, labels_file: str | None, own: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if labels_file:
        return read_labels(labels_file, num_classes)
    if own is not None:  # a trained model's class names
        if len(own) != num_classes:
            raise UsageError(f"the model's metadata names {len(own)} classes; its head has {num_classes}")
        return own
    return categories() if num_classes == len(categories()) else tuple(f"class_{i}" for i in range(num_classes))


def read_labels(path: str, num_classes: int) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8-sig") as f:  # a leading byte-order mark (Notepad's) is not a label
            labels = tuple(line.rstrip("\r\n") for line in f if line.strip())
    except OSError as exc:
        raise UsageError(f"labels file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"labels file {path}: not UTF-8 text") from None
    if len(labels) != num_classes:
        raise UsageError(f"labels file {path} has {len(labels)} labels; the checkpoint has {num_classes} classes")
    return labels


@dataclass(frozen=True)
class LoadedModel:
    weights: Resolved  # which weights, under what name, with what preprocessing
    labels: tuple[str, ...]
    module: object  # model.ResNet, in eval mode, on the CPU; formats.ExportedModel for an exported file

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def load(weights: Resolved, *, offline: bool = False, quiet: bool = False) -> LoadedModel:
    """Everything a run needs to classify: the model with its weights and its labels (`weights.labels_file`'s
    when --labels gave one). An exported file (weights.runtime "onnx", "openvino") gives its bytes
    (formats.ExportedModel) in place of the torch module: runtimes.make_predictor opens them."""
    if weights.runtime != "torch":
        from .formats import read_blobs

        labels = _labels(len(weights.labels), weights.labels_file, weights.labels)
        return LoadedModel(weights, labels, read_blobs(weights.name, weights.runtime, len(labels)))
    if weights.spec is not None:
        state = read_state_dict(fetch(weights.spec, offline=offline, quiet=quiet), quantized=weights.spec.quantized)
        if weights.spec.quantized and not is_quantized(state):
            raise UsageError(f"weights {weights.name}: the cached file {cached_file(weights.spec)} is not an int8 "
                             f"network's state dict")
    else:
        state = read_state_dict(weights.name)
    module = build_model(weights.arch, state, weights.name)
    labels = _labels(head_classes(module.fc.out_features), weights.labels_file, weights.labels)
    return LoadedModel(weights, labels, module)
