"""A job: what every engine is given, built from the command line once its options are checked.

The checks here are the cheap ones, run before torch is imported, weights are looked up or anything is decoded:
a typo costs nothing. What only the hardware can answer (is there a CUDA device, does this CPU do bf16) is the
engine's to say once torch is loaded: the local engine asks this machine, the Ray engine the cluster.
"""

from __future__ import annotations

import enum
import importlib.util
import re
import sys
from dataclasses import dataclass

from . import cloud
from .errors import UsageError
from .readers import Network
from .resolve import Resolved, resolve
from .sources import Listing


class Precision(str, enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Engine(str, enum.Enum):
    local = "local"
    ray = "ray"


RAY_HINT = "--engine ray needs Ray: pip install 'resnet-classify[ray]'"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class Explain:
    """What `explain` asks of the engine for each image (cam.py)."""

    method: str  # gradcam, gradcam++ or layercam
    layer: str  # a block's name: layer4.2
    position: int  # its index among all residual blocks
    target: int | None = None  # the class explained; None: each image's top-1


@dataclass(frozen=True)
class Job:
    """One run of the network over a stream of inputs. Engines read it; nothing in it is torch."""

    inputs: Listing
    weights: Resolved
    topk: int | None = None  # None: 5, or every class of a model with fewer
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps, as the user wrote it
    precision: Precision = Precision.fp32
    batch_size: int | None = None  # None: the engine's default for its device
    workers: int | None = None  # decode threads (local) or model actors (ray); None: the engine decides
    fast_decode: bool = False
    network: Network = Network()
    labels_file: str | None = None
    quiet: bool = False
    engine: Engine = Engine.local
    ray_address: str | None = None
    restrict: tuple[int, ...] | None = None  # predict among these class indices only (evaluate --restrict)
    embed: bool = False  # Embedding records (the head's input vector) instead of top-k predictions
    explain: Explain | None = None  # each success also gets its class activation map (local engine)
    view: int | None = None  # each success keeps its picture, this many pixels on its longer side at most
    on_batch: object = None  # called with the number of images of each batch once the network has run it (local)


def topk_for(topk: int | None, num_classes: int) -> int:
    """--topk, or by default 5, or every class of a model with fewer."""
    return topk if topk is not None else min(5, num_classes)


def default_batch_size(batch_size: int | None, device_type: str) -> int:
    """Images per forward pass: 8 on a CPU, 64 on a GPU (docs/benchmarks.md has the measurements)."""
    return batch_size or (8 if device_type == "cpu" else 64)


def check_device(device: str, precision: Precision) -> str:
    """The device's spelling, and the precision rules that need no hardware to answer."""
    name = device.strip().lower()
    if not _DEVICE.fullmatch(name):
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if name == "cpu" and precision is Precision.fp16:
        raise UsageError("--precision fp16 needs a GPU (cuda or mps); on the CPU use bf16 or fp32")
    if name == "mps" and precision is Precision.bf16:
        raise UsageError("--precision bf16 is not supported on mps; use fp16")
    return name


def make_job(inputs: list[str], *, arch: str | None = None, weights: str = "DEFAULT", topk: int | None = None,
             device: str = "auto", precision: Precision = Precision.fp32, batch_size: int | None = None,
             workers: int | None = None, recursive: bool = False, null_separated: bool = False,
             offline: bool = False, labels: str | None = None, fast_decode: bool = False,
             resize: int | None = None, crop: int | None = None, quiet: bool = False,
             engine: Engine = Engine.local, ray_address: str | None = None, sources=None,
             restrict: tuple[int, ...] | None = None, embed: bool = False, explain: Explain | None = None,
             view: int | None = None) -> Job:
    """Check the options that involve each other and build the job. Raises UsageError. Listing has not
    started: the engine starts it (`Listing.start`) when it is ready to consume. `sources`: sources listed
    already (evaluate's labelled images), taken in place of listing `inputs`."""
    precision, engine = Precision(precision), Engine(engine)
    device = check_device(device, precision)
    resolved = resolve(arch, weights, resize, crop)
    if topk is not None and restrict is not None and topk > len(restrict):
        raise UsageError(f"--topk {topk} is more than the {len(restrict)} classes predictions are restricted to")
    if topk is not None and resolved.num_classes is not None and topk > resolved.num_classes:
        raise UsageError(f"--topk {topk} is more than the model's {resolved.num_classes} classes")
    if "-" in inputs and sys.stdin is None:
        raise UsageError("- reads paths from stdin, but stdin is closed")
    if ray_address and engine is not Engine.ray:
        raise UsageError("--ray-address needs --engine ray")
    if engine is Engine.ray and importlib.util.find_spec("ray") is None:
        raise UsageError(RAY_HINT)
    if not offline:
        for arg in inputs:
            if cloud.is_cloud(arg):
                cloud.require(arg)
    from .weights import ensure_available

    ensure_available(resolved, offline=offline)  # offline without the weights: fail before any input is read
    network = Network(offline=offline)
    if sources is not None:
        listing = Listing.of(sources, network=network)
    else:
        listing = Listing(inputs, recursive=recursive, null_separated=null_separated, network=network)
    return Job(inputs=listing, weights=resolved, topk=topk, device=device, precision=precision,
               batch_size=batch_size, workers=workers, fast_decode=fast_decode, network=network,
               labels_file=labels, quiet=quiet, engine=engine, ray_address=ray_address,
               restrict=None if restrict is None else tuple(sorted(restrict)), embed=embed, explain=explain,
               view=view)
