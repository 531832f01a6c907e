"""A job: what every engine is given, built from the command line once its options are checked.

The options travel in groups, each a frozen value built once from the command line (in the spirit of pip's
option groups and timm's pretrained config):

    ModelOptions  --arch --weights --resize --crop --labels   -> resolve() once -> resolve.Resolved
    RunOptions    --device --precision --batch-size --workers --fast-decode --engine --ray-address --offline
                  --quiet
    InputOptions  --recursive --null

and what the run computes is a `tasks.Task`. `make_job(inputs, weights, task, options)` checks what involves
several of them and builds the `Job`.

The checks here are the cheap ones, run before torch is imported, weights are looked up or anything is decoded:
a typo costs nothing. What only the hardware can answer (is there a CUDA device, does this CPU do bf16) is the
engine's to say once torch is loaded (`devices.py` holds both halves of those rules).
"""

from __future__ import annotations

import enum
import importlib.util
import sys
from dataclasses import dataclass

from ..inputs import cloud
from ..models.devices import Precision, check_device
from ..core.errors import UsageError
from ..inputs.readers import Network
from ..models.resolve import Resolved
from ..inputs.sources import Listing
from .tasks import Task

RAY_HINT = "--engine ray needs Ray: pip install 'resnet-classify[ray]'"


class Engine(str, enum.Enum):
    """Where the network runs (engines/): a member per module there."""

    local = "local"
    ray = "ray"


@dataclass(frozen=True)
class ModelOptions:
    """Which network: --arch, --weights, --resize, --crop and --labels, as the user gave them."""

    arch: str | None = None
    weights: str = "DEFAULT"
    resize: int | None = None
    crop: int | None = None
    labels: str | None = None  # a --labels file

    def resolve(self) -> Resolved:
        """The one reading of these options (resolve.resolve). Raises UsageError."""
        from ..models import resolve

        return resolve.resolve(self.arch, self.weights, self.resize, self.crop, labels_file=self.labels)


@dataclass(frozen=True)
class RunOptions:
    """How and where the network runs."""

    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps, as the user wrote it (checked by make_job)
    precision: Precision = Precision.fp32
    batch_size: int | None = None  # images gathered per step; None: the engine's default for its device
    workers: int | None = None  # decode threads (local) or model actors (ray); None: the engine decides
    fast_decode: bool = False
    engine: Engine = Engine.local
    ray_address: str | None = None
    offline: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        """Checked and normalised as soon as built, before any weights are looked up (a typo costs nothing):
        the enums from their names, the device's spelling and the precision rules that need no hardware."""
        object.__setattr__(self, "precision", _member(Precision, "--precision", self.precision))
        object.__setattr__(self, "engine", _member(Engine, "--engine", self.engine))
        object.__setattr__(self, "device", check_device(self.device, self.precision))


@dataclass(frozen=True)
class InputOptions:
    """How INPUT arguments are listed (sources.Listing)."""

    recursive: bool = False
    null_separated: bool = False  # paths on stdin are NUL-separated


def _member(kind: type[enum.Enum], option: str, value):
    """The member of `kind` named `value`, or a UsageError in the command line's words."""
    try:
        return kind(value)
    except ValueError:
        names = [m.value for m in kind]
        raise UsageError(f"{option} {value}: use {', '.join(names[:-1])} or {names[-1]}") from None


@dataclass(frozen=True)
class Job:
    """One run of a task over a stream of inputs. Engines read it; nothing in it is torch."""

    inputs: Listing
    weights: Resolved
    task: Task
    options: RunOptions = RunOptions()
    network: Network = Network()
    view_size: int | None = None  # each success keeps its picture, this many pixels on its longer side at most
    on_batch: object = None  # called with the number of images of each batch once the network has run it (local)


def make_job(inputs: list[str], weights: Resolved, task: Task, options: RunOptions = RunOptions(), *,
             listing: InputOptions = InputOptions(), sources=None, view_size: int | None = None) -> Job:
    """Check the options that involve each other and build the job. Raises UsageError. `weights` is resolved
    once by the caller (ModelOptions.resolve). Listing has not started: the engine starts it (`Listing.start`)
    when it is ready to consume. `sources`: sources listed already (evaluate's labelled images), taken in place
    of listing `inputs`. `view_size`: keep each picture for an overlay or a report (local engine)."""
    engine = options.engine
    if engine.value not in task.engines:
        raise UsageError(f"{task.name} cannot run on --engine {engine.value}; it runs on --engine "
                         f"{' or '.join(sorted(task.engines))}")
    if view_size is not None and engine is not Engine.local:
        raise UsageError(f"--engine {engine.value} does not return the pictures a report or an overlay needs; "
                         "use --engine local")
    if weights.num_classes is not None:
        task = task.bind(weights.num_classes)  # a --topk too large costs nothing: checked before any input
    if "-" in inputs and sys.stdin is None:
        raise UsageError("- reads paths from stdin, but stdin is closed")
    if options.ray_address and engine is not Engine.ray:
        raise UsageError("--ray-address needs --engine ray")
    if engine is Engine.ray and importlib.util.find_spec("ray") is None:
        raise UsageError(RAY_HINT)
    if not options.offline:
        for arg in inputs:
            if cloud.is_cloud(arg):
                cloud.require(arg)
    from ..models.formats import check_exported
    from ..models.weights import ensure_available

    check_exported(weights, options.device, options.precision)  # an exported file: CPU, its own precision

    ensure_available(weights, offline=options.offline)  # offline without the weights: fail before any input
    network = Network(offline=options.offline)
    if sources is not None:
        inputs_listing = Listing.of(sources, network=network)
    else:
        inputs_listing = Listing(inputs, recursive=listing.recursive, null_separated=listing.null_separated,
                                 network=network)
    return Job(inputs=inputs_listing, weights=weights, task=task, options=options, network=network,
               view_size=view_size)
