"""The network a server answers with, loaded once: the one place the server builds it.

`load(settings)` resolves the weights and builds the network exactly as `classify`'s local engine does
(`inference.load_for` + `inference.Predictor`), so a server's record for an image equals the command's to the
byte. A model stored in another form is loaded here too, and nothing else in the server changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.records import Record
from ..run.job import Engine, ModelOptions, RunOptions, make_job
from ..run.pipeline import Prepared, stack
from ..run.tasks import Classify, Embed, Task


@dataclass(frozen=True)
class ModelSettings:
    """Which network and how it runs: the command line's --arch/--weights/--resize/--crop/--labels (`model`),
    --device/--precision/--offline (`run`) and --topk (`topk`, None: 5 or every class of a smaller model).
    A plain value: it travels to a Ray Serve replica, which loads the network there."""

    model: ModelOptions
    run: RunOptions = RunOptions()
    topk: int | None = None


class Model:
    """A loaded network and what it answers: `classify` (the bound Classify task of --topk), `embed`, the
    weights (resolve.Resolved: names, preprocessing), the class labels and `chunk`, the number of images of the
    network's fixed forward shape (8 on a CPU, 64 on a GPU)."""

    def __init__(self, predictor, weights, labels: tuple[str, ...], classify: Classify) -> None:
        self.predictor = predictor
        self.weights = weights
        self.labels = labels
        self.classify = classify
        self.embed = Embed()
        self.chunk = predictor.chunk
        self.num_classes = len(labels)

    @property
    def name(self) -> str:
        """The model's name on TorchServe's /predictions/{name}: the architecture (resnet50)."""
        return self.weights.arch.name

    def task(self, kind: str, topk: int | None = None) -> Task:
        """The task of an endpoint: "classify" (with this request's `topk`, else --topk) or "embed". Raises
        UsageError for a top-k larger than the model's classes."""
        if kind == "embed":
            return self.embed
        if topk is None:
            return self.classify
        return Classify(topk).bind(self.num_classes)

    def records(self, task: Task, prepared: Sequence[Prepared]) -> list[Record]:
        """One record per prepared input, in order (tasks.Task.records): the successes run through the network
        together, in its fixed-shape chunks, so each answer is independent of the others."""
        outputs = None
        if any(p.error is None for p in prepared):
            outputs = task.compute(self.predictor, stack(list(prepared), self.weights.preprocess.crop))
        return task.records(prepared, outputs, self.weights, self.labels)

    def warm_up(self) -> None:
        """One forward pass of blank images, so that the first request does not pay for the kernels' set-up."""
        crop = self.weights.preprocess.crop
        self.records(self.classify, [Prepared("-", bytes(crop * crop * 3))])


def load(settings: ModelSettings) -> Model:
    """The network of `settings`, on this machine's device (the local engine's path: inference.load_for and
    inference.Predictor). Raises UsageError (unknown architecture, weights that do not fit, no such device) and
    WeightsUnavailable."""
    from ..models.inference import Predictor, load_for

    weights = settings.model.resolve()
    run = settings.run
    if run.engine is not Engine.local:  # the network itself always runs in this process
        run = dataclasses.replace(run, engine=Engine.local, ray_address=None)
    job = make_job([], weights, Classify(settings.topk), run)
    device, dtype, loaded, task = load_for(job)
    predictor = Predictor(loaded.module, weights.preprocess, device=device, dtype=dtype)
    return Model(predictor, weights, tuple(loaded.labels), task)
