"""Devices, precisions and the network's forward shape: every rule about them, in one place.

Two halves, because the cheap half must answer before torch is imported (a typo costs nothing):
- `check_device(device, precision)`: the spelling, and the rules that need no hardware (fp16 is no CPU
  precision, bf16 no Apple GPU one), run by `job.make_job`;
- `resolve_device(name)` and `check_precision(precision, device)`: what this machine has, run by an engine
  once torch is loaded; the same rules again for `auto`, which only then becomes a device type.

The forward shape: the network always runs chunks of `forward_batch(device_type)` images (8 on a CPU, 64 on a
GPU), the last one padded, so that an image's answer does not depend on its batch mates (inference.py).
"""

from __future__ import annotations

import enum
import re

from ..core.errors import UsageError


class Precision(str, enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def forward_batch(device_type: str) -> int:
    """The one shape the network runs on: 8 images on a CPU (the fastest of 4/8/12/16/32 measured on the fused
    path, docs/benchmarks.md), 64 on a GPU. Also the default number of images gathered per step."""
    return 8 if device_type == "cpu" else 64


def default_batch_size(batch_size: int | None, device_type: str) -> int:
    """Images gathered per step: --batch-size, else the forward shape."""
    return batch_size or forward_batch(device_type)


def _precision_rule(precision: Precision, device_type: str) -> str | None:
    """Why `precision` cannot run on a device of `device_type` whatever the hardware, or None."""
    if device_type == "cpu" and precision is Precision.fp16:
        return "--precision fp16 needs a GPU (cuda or mps); on the CPU use bf16 or fp32"
    if device_type == "mps" and precision is Precision.bf16:
        return "--precision bf16 is not supported on mps; use fp16"
    return None


def check_device(device: str, precision: Precision) -> str:
    """The device's spelling normalised, checked with the precision rules that need no hardware. Raises
    UsageError."""
    name = device.strip().lower()
    if not _DEVICE.fullmatch(name):
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    rule = _precision_rule(Precision(precision), name.split(":")[0])
    if rule:
        raise UsageError(rule)
    return name


def resolve_device(name: str):
    """The torch.device `name` (auto, cpu, cuda, cuda:N, mps; spelling checked by `check_device`) means on this
    machine, or a UsageError naming what is missing."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is available here (try --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"--device {name}: Apple's Metal backend is not available here (try --device cpu)")
    return device


def dtype_of(precision: Precision | str):
    """The torch dtype of a precision: float32, bfloat16 or float16."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[Precision(precision).value]


def check_precision(precision: Precision | str, device) -> object:
    """The torch dtype of `precision` on the torch.device `device`, or a UsageError when this hardware cannot
    run it (the rules of `check_device`, and whether this CPU or GPU has bfloat16)."""
    import torch

    from . import fused
    precision = Precision(precision)
    rule = _precision_rule(precision, device.type)
    if rule:
        raise UsageError(rule)
    if precision is Precision.bf16:
        if device.type == "cpu" and not fused.bf16_supported():
            raise UsageError("--precision bf16: this CPU has no fast bfloat16 support (AVX-512 BF16 or AMX)")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--precision bf16: this GPU does not support bfloat16; use fp16")
    return dtype_of(precision)
