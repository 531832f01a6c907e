"""Finding, downloading and loading weights.

Published weights live where torchvision keeps them, `$TORCH_HOME/hub/checkpoints/<file name from the URL>`
(TORCH_HOME defaults to `$XDG_CACHE_HOME/torch`, then `~/.cache/torch`), so files a user already downloaded
through torchvision are reused and the other way round. A missing file is downloaded with a progress bar on
stderr, its SHA-256 checked against the prefix in its name, and renamed into place only when complete.
`--offline` or RESNET_CLASSIFY_OFFLINE=1 never touches the network.

Every checkpoint is read with `torch.load(..., weights_only=True)`: plain tensors only, so a file whose
unpickling would run code is refused and its code never runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

from . import net
from .console import progress_bar
from .errors import PROG, UsageError, WeightsUnavailable, first_line
from .registry import ArchSpec, WeightsSpec, categories
from .resolve import Resolved

OFFLINE_ENV = "RESNET_CLASSIFY_OFFLINE"
OFFLINE_REASON = "the network is off (--offline or RESNET_CLASSIFY_OFFLINE)"


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


def read_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from a .pth/.pt file (bare, or under "state_dict" or "model" as training scripts save it,
    with DataParallel's "module." prefix removed) or from a .safetensors file."""
    import pickle

    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"checkpoint {path}: no such file")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageError(f"checkpoint {path}: .safetensors needs the safetensors package") from None
        try:
            obj = load_file(path)
        except Exception as exc:
            raise UsageError(f"checkpoint {path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UsageError(
                f"checkpoint {path}: refused, it holds more than tensors and loading it could run code "
                f"(weights_only=True: {first_line(exc)})"
            ) from None
        except Exception as exc:
            raise UsageError(f"checkpoint {path}: not a readable PyTorch checkpoint ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"checkpoint {path}: no state dict of tensors found in it")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def build_model(arch: ArchSpec, state_dict: dict, source: str):
    """The architecture with these weights, in eval mode. The class count is read off the head's weight; a
    checkpoint that does not fit is a usage error naming the first key that differs."""
    import torch

    from .model import build

    fc = state_dict.get("fc.weight")
    if fc is None or fc.dim() != 2:
        raise UsageError(f"checkpoint {source} does not fit {arch.name}: it has no fc.weight head")
    model = build(arch, num_classes=fc.shape[0])
    expected = model.state_dict()
    state = dict(state_dict)
    for key, want in expected.items():
        got = state.get(key)
        if got is None and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)  # older checkpoints predate this buffer
            continue
        if got is None:
            raise UsageError(f"checkpoint {source} does not fit {arch.name}: missing key {key!r}")
        if tuple(got.shape) != tuple(want.shape):
            raise UsageError(
                f"checkpoint {source} does not fit {arch.name}: {key!r} has shape {tuple(got.shape)}, "
                f"{arch.name} needs {tuple(want.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise UsageError(f"checkpoint {source} does not fit {arch.name}: unexpected key {extra[0]!r}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def class_names(weights: Resolved, labels_file: str | None = None) -> tuple[str, ...]:
    """The names of the model's classes, as its records will give them: the --labels file's, else ImageNet's
    for published weights and 1000-class checkpoints, else class_N. A checkpoint without --labels is read to
    count its classes."""
    num_classes = weights.num_classes
    if num_classes is None:
        shape = head_shape(weights.name)
        if shape is None:  # a layout the quick reader does not know: read it whole
            fc = read_state_dict(weights.name).get("fc.weight")
            shape = None if fc is None else tuple(fc.shape)
        if shape is None or len(shape) != 2:
            raise UsageError(f"checkpoint {weights.name} does not fit {weights.arch.name}: it has no fc.weight head")
        num_classes = head_classes(shape[0])
    return _labels(num_classes, labels_file, weights.labels)


def head_classes(outputs: int) -> int:
    """The classes a head with `outputs` outputs answers: a one-output head is a sigmoid binary classifier,
    two classes (0: the negative, 1: the positive; inference.Predictor); any other head, one per output."""
    return 2 if outputs == 1 else outputs


def head_shape(path: str) -> tuple[int, ...] | None:
    """The shape of a checkpoint's fc.weight, read without torch and without its tensors: from a .safetensors
    header, or from the pickle inside a .pth zip through an unpickler that builds nothing but shapes (it
    knows three torch names and refuses every other, so no code in the file can run). None when the file is
    in neither form or holds no fc.weight (the caller then reads it the usual way)."""
    import json
    import struct
    import zipfile

    try:
        if path.endswith(".safetensors"):
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            shapes = {k: tuple(v["shape"]) for k, v in header.items() if isinstance(v, dict) and "shape" in v}
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
                shapes = _ShapeUnpickler(io.BytesIO(z.read(name))).load()
        else:
            return None
    except Exception:  # anything unexpected: the usual reading decides, with its own messages
        return None
    for key in ("state_dict", "model"):
        if isinstance(shapes, dict) and isinstance(shapes.get(key), dict):
            shapes = shapes[key]
    if not isinstance(shapes, dict):
        return None
    shape = shapes.get("fc.weight", shapes.get("module.fc.weight"))
    return tuple(shape) if isinstance(shape, tuple) else None


class _ShapeUnpickler(pickle.Unpickler):
    """Unpickles torch.save's data.pkl into {name: shape}: tensors become their size tuple, storages nothing."""

    def find_class(self, module: str, name: str):
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return lambda storage, offset, size, *rest: tuple(size)
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not read here")

    def persistent_load(self, pid):
        return None


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
        with open(path, encoding="utf-8") as f:
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
    module: object  # model.ResNet, in eval mode, on the CPU

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def load(weights: Resolved, *, offline: bool = False, labels_file: str | None = None,
         quiet: bool = False) -> LoadedModel:
    """Everything a run needs to classify: the model with its weights and its labels."""
    if weights.spec is not None:
        state = read_state_dict(fetch(weights.spec, offline=offline, quiet=quiet))
    else:
        state = read_state_dict(weights.name)
    module = build_model(weights.arch, state, weights.name)
    return LoadedModel(weights, _labels(head_classes(module.fc.out_features), labels_file, weights.labels), module)
