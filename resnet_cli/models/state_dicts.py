"""Reading checkpoint files safely: a state dict from a .pth/.pt or .safetensors file, and its tensors' shapes
read from the header alone (without torch and without running anything in the file).

Every checkpoint is read with `torch.load(..., weights_only=True)`: plain tensors only (and the plain data
training scripts save beside them: numbers, strings, argparse.Namespace), so a file whose unpickling would run
code is refused and its code never runs.

What a file claims is bounded before anything acts on it: a .safetensors header is checked against the file by
safetensors itself; a .pth zip's members may not unpack to more than twice the file's size, its pickle to more
than MAX_PICKLE_BYTES, and no tensor may claim more elements than its storage holds; a head has at most
MAX_CLASSES classes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import math
import os
import pickle
import re

from ..core.errors import UsageError, first_line
from .registry import ArchSpec

MAX_CLASSES = 1_000_000  # classes a head may have (a model's labels, a checkpoint's fc.weight)

MAX_PICKLE_BYTES = 64 << 20  # a .pth's data.pkl unpacked (a resnet152 state dict's is ~100 KB)


STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema")  # where training scripts keep the weights, in order


# Plain data a training checkpoint holds beside its tensors (timm's and torchvision's train.py save their
# argparse.Namespace `args`), allowed to torch.load(weights_only=True) for the length of one load.
SAFE_GLOBALS = (argparse.Namespace,)


RESAVE_HINT = "re-save it as a state dict of tensors: torch.save(model.state_dict(), path)"


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _clean(text: str) -> str:
    """A library's message for one line of ours: terminal escapes and control characters removed."""
    return " ".join(_ESCAPES.sub("", text).split())


def open_safetensors(path: str):
    """safetensors' reader of `path` (header only: the tensors stay on disk), which has checked that every
    tensor's dtype, shape and offsets fit inside the file. Raises UsageError for a file it refuses."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise UsageError(f"checkpoint {path}: .safetensors needs the safetensors package") from None
    try:
        return safe_open(path, framework="numpy")
    except Exception as exc:  # SafetensorError, OSError: the file is not one safetensors reads
        raise UsageError(f"checkpoint {path}: not a readable safetensors file ({_clean(first_line(exc))})") from None


def _bounded_zip(path: str, z) -> None:
    """A .pth zip whose members would unpack to more than twice the file's size (torch.save stores them
    uncompressed), or whose pickle would unpack past MAX_PICKLE_BYTES, is refused before any is read."""
    size = os.path.getsize(path)
    infos = z.infolist()
    claimed = sum(i.file_size for i in infos)
    if claimed > 2 * size + (1 << 20):
        raise UsageError(f"checkpoint {path}: its members claim {claimed:,} bytes unpacked, far more than a "
                         f"{size:,}-byte file holds; {RESAVE_HINT}")
    for i in infos:
        if i.filename.endswith("data.pkl") and i.file_size > MAX_PICKLE_BYTES:
            raise UsageError(f"checkpoint {path}: its {i.filename} claims {i.file_size:,} bytes, over the "
                             f"{MAX_PICKLE_BYTES >> 20} MiB a checkpoint's pickle may have; {RESAVE_HINT}")


def _unwrap(obj):
    """The state dict inside a training checkpoint ({"state_dict": ..., "args": ...}): the first of
    STATE_DICT_KEYS that holds a dict, else `obj` itself."""
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def _packed(key: str, value) -> bool:
    """An entry a quantized Linear's state dict holds beside tensors: its packed (weight, bias) pair and its
    dtype (torch.ao.nn.quantized.Linear: `fc._packed_params._packed_params`, `fc._packed_params.dtype`)."""
    import torch

    if key.endswith("._packed_params.dtype"):
        return isinstance(value, torch.dtype)
    if key.endswith("._packed_params._packed_params"):
        return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor)
                and (value[1] is None or isinstance(value[1], torch.Tensor)))
    return False


def read_state_dict(path: str | os.PathLike, *, quantized: bool = False) -> dict:
    """A state dict from a .pth/.pt file (bare, or under "state_dict", "model" or "state_dict_ema" as
    training scripts save it, with DataParallel's "module." prefix removed) or from a .safetensors file.
    {name: torch.Tensor} on the CPU, dtypes as stored. Raises UsageError for a file that is missing, not a
    regular file, not a checkpoint, bigger inside than outside (zip bomb), or holding anything that could run
    code when unpickled (the message names the global and how to re-save the file). With `quantized`, the
    state dict of an int8 network (quantized.py): quantized tensors, and each quantized Linear's packed
    (weight, bias) pair and dtype besides."""
    import zipfile

    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"checkpoint {path}: no such file")
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path}: not a regular file")
    if path.endswith(".safetensors"):
        with open_safetensors(path):  # the header checked against the file first
            pass
        from safetensors.torch import load_file

        try:
            obj = load_file(path)
        except Exception as exc:
            raise UsageError(f"checkpoint {path}: not a readable safetensors file ({_clean(first_line(exc))})") \
                from None
    else:
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as z:
                    _bounded_zip(path, z)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise UsageError(f"checkpoint {path}: not a readable PyTorch checkpoint "
                                 f"({_clean(first_line(exc))})") from None
        allow = getattr(torch.serialization, "safe_globals", None)  # PyTorch 2.5+: scoped to this load
        try:
            with allow(list(SAFE_GLOBALS)) if allow else contextlib.nullcontext():
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            text = _clean(str(exc))
            found = re.search(r"GLOBAL ([\w.]+)", text)
            detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(Check the documentation|$)", text)
            detail = detail.group(1)[:200] if detail else first_line(exc)[:200]
            if not found and detail.startswith("Unsupported operand"):  # not a pickle at all
                raise UsageError(f"checkpoint {path}: not a readable PyTorch checkpoint ({detail})") from None
            what = f"the global {found.group(1)}" if found else detail
            raise UsageError(f"checkpoint {path}: refused, it holds more than tensors ({what}) and loading it "
                             f"could run code; {RESAVE_HINT}") from None
        except Exception as exc:
            raise UsageError(f"checkpoint {path}: not a readable PyTorch checkpoint ({_clean(first_line(exc))})") \
                from None
    obj = _unwrap(obj)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) or (quantized and _packed(k, v))
                                            for k, v in obj.items()):
        raise UsageError(f"checkpoint {path}: no state dict of tensors found in it")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]] | None:
    """{key: shape} of a checkpoint's state dict, read without torch and without its tensors: from a
    .safetensors header (checked against the file by safetensors), or from the pickle inside a .pth zip
    through an unpickler that builds nothing but shapes (it knows a few torch names and argparse.Namespace
    and refuses every other, so no code in the file can run). Keys as stored (a "module." prefix kept).
    None when the file is in neither form or its pickle is not one this reader knows (the usual reading then
    decides, with its own messages). Raises UsageError when the file claims more than it holds (`_bounded_zip`,
    a tensor larger than its storage)."""
    import zipfile

    if path.endswith(".safetensors"):
        with open_safetensors(path) as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            _bounded_zip(path, z)
            name = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            sizes = {n.rsplit("/data/", 1)[1]: z.getinfo(n).file_size for n in z.namelist() if "/data/" in n}
            shapes = _ShapeUnpickler(io.BytesIO(z.read(name)), path, sizes).load()
    except UsageError:
        raise
    except Exception:  # anything unexpected: the usual reading decides, with its own messages
        return None
    shapes = _unwrap(shapes)
    if not isinstance(shapes, dict):
        return None
    return {k: v for k, v in shapes.items() if isinstance(k, str) and isinstance(v, tuple)}


def head_classes(outputs: int) -> int:
    """The classes a head with `outputs` outputs answers: a one-output head is a sigmoid binary classifier,
    two classes (0: the negative, 1: the positive; inference.Predictor); any other head, one per output."""
    return 2 if outputs == 1 else outputs


def head_shape(path: str) -> tuple[int, ...] | None:
    """The shape of a checkpoint's fc.weight (`checkpoint_shapes`); None when the quick reader cannot tell."""
    shapes = checkpoint_shapes(path)
    if shapes is None:
        return None
    shape = shapes.get("fc.weight", shapes.get("module.fc.weight"))
    return shape if isinstance(shape, tuple) else None


def infer_arch(shapes: dict[str, tuple[int, ...]]) -> ArchSpec | None:
    """The registry's architecture whose layout these state-dict shapes have: block type (a conv3 in the
    blocks: bottleneck), blocks per stage (the highest layerN.i), groups and width per group (layer1.0's conv1
    and conv2). None when they fit none."""
    from .registry import architectures

    shapes = {k[len("module."):] if k.startswith("module.") else k: v for k, v in shapes.items()}
    layers = []
    for stage in range(1, 5):
        blocks = {k.split(".")[1] for k in shapes if k.startswith(f"layer{stage}.")}
        if not blocks or not all(b.isdigit() for b in blocks):
            return None
        layers.append(max(int(b) for b in blocks) + 1)
    conv1, conv2 = shapes.get("layer1.0.conv1.weight"), shapes.get("layer1.0.conv2.weight")
    if conv1 is None or conv2 is None or len(conv1) != 4 or len(conv2) != 4 or conv2[1] < 1:
        return None
    if "layer1.0.conv3.weight" in shapes:
        block, width = "bottleneck", conv1[0]  # layer1's width: 64 * width_per_group / 64 * groups
        groups = width // conv2[1]
        per_group = width // groups if groups else 0
    else:
        block, groups, per_group = "basic", 1, 64
    return next((a for a in architectures().values()
                 if (a.block, a.layers, a.groups, a.width_per_group) == (block, tuple(layers), groups, per_group)),
                None)


def checkpoint_arch(path: str) -> ArchSpec | None:
    """The architecture a checkpoint file's shapes identify (`infer_arch`), read from its header only; None
    when the quick reader cannot tell or the shapes fit no known architecture."""
    shapes = checkpoint_shapes(path)
    return None if shapes is None else infer_arch(shapes)


class _Storage:
    def __init__(self, numel: int) -> None:
        self.numel = numel


class _ShapeUnpickler(pickle.Unpickler):
    """Unpickles torch.save's data.pkl into {name: shape}: tensors become their size tuple, storages their
    element count, checked against the bytes the zip holds for them (`sizes`: {storage key: bytes})."""

    def __init__(self, file, path: str = "", sizes: dict[str, int] | None = None) -> None:
        super().__init__(file)
        self.path = path
        self.sizes = sizes or {}

    def _rebuild(self, storage, offset, size, stride=None, *rest):
        size = tuple(size)
        if not all(isinstance(n, int) and n >= 0 for n in size) or not isinstance(offset, int) or offset < 0:
            raise pickle.UnpicklingError("not a tensor")
        if isinstance(storage, _Storage) and math.prod(size) and stride is not None:
            span = offset + sum((n - 1) * abs(st) for n, st in zip(size, stride)) + 1
            if span > storage.numel:
                raise UsageError(f"checkpoint {self.path}: a tensor of shape {size} claims more than the "
                                 f"{storage.numel:,} elements its data holds")
        return size

    def find_class(self, module: str, name: str):
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return self._rebuild
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not read here")

    def persistent_load(self, pid):
        # torch.save's new format: ("storage", storage type, key, location, number of elements)
        if isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[4], int):
            key, numel = str(pid[2]), pid[4]
            held = self.sizes.get(key, 0)  # a storage without its data member holds nothing
            if numel < 0 or numel > held:
                raise UsageError(f"checkpoint {self.path}: a storage claims {numel:,} elements where its data holds "
                                 f"{held:,} bytes")
            return _Storage(numel)
        return None
