"""What a run computes for each image: a task, a value the job carries instead of mode flags.

    Classify(topk, restrict)   the top-k classes (classify, evaluate)
    Embed()                    the vector the classifier head receives (embed, similar, train)
    Explain(method, layer, ...) the top-k classes and a class activation map (explain)

A task knows three things, and engines and the pipeline ask it instead of branching on what it is:
- `engines`: the engines that can run it. `job.make_job` refuses any other before anything heavy starts (the
  Ray engine's actors return no gradients, so it cannot run Explain).
- `compute(predictor, pixels)`: its outputs for a batch of images, a tuple of numpy arrays with one row per
  image (in the spirit of llm's `EmbeddingModel.embed_batch` and Ray Data's `map_batches`: one small method,
  everything else derived). The network always runs `inference.Predictor`'s fixed forward shape, so a row
  depends on its image and the options only.
- `record(path, row, weights, labels)`: one success record from one row of those outputs.

`bind(num_classes)` checks a task against the model's class count and fills in what depends on it (the default
top-k): called once the count is known, before the first image is read when the weights say it (published
weights: 1000), else once the model is loaded.

No torch at import: `job.make_job` builds tasks before torch is imported.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..core.errors import NON_FINITE_OUTPUT, UsageError
from ..core.records import Embedding, Explanation, Failure, Prediction, Record, Success

ALL_ENGINES = frozenset({"local", "ray"})


def topk_for(topk: int | None, num_classes: int) -> int:
    """--topk, or by default 5, or every class of a model with fewer."""
    return topk if topk is not None else min(5, num_classes)


class Task(ABC):
    """What a run computes for each successfully decoded image (module docstring)."""

    name: ClassVar[str]
    engines: ClassVar[frozenset[str]] = ALL_ENGINES
    output_name: ClassVar[str] = "output"  # what a failure calls the outputs: "embedding", ...

    def bind(self, num_classes: int) -> "Task":
        """This task for a model of `num_classes` classes, its defaults filled in. Raises UsageError."""
        return self

    @abstractmethod
    def compute(self, predictor, pixels) -> tuple:
        """Outputs for `pixels`, a (N, crop, crop, 3) uint8 CPU tensor: a tuple of numpy arrays of N rows."""

    @abstractmethod
    def record(self, path: str, row: tuple, weights, labels: Sequence[str]) -> Record:
        """The success record of one image from its `row` (one row of each of `compute`'s arrays)."""

    def records(self, prepared: Sequence, outputs: tuple | None, weights, labels: Sequence[str]) -> list[Record]:
        """One record per prepared input (pipeline.Prepared), in order: a failure for each that failed to
        decode, a success from the next row of `outputs` for each other; a row holding NaN or infinity (weights
        that hold them, an overflow) is a `non_finite_output` failure, never a record JSON cannot hold."""
        import numpy as np

        finite = None  # one check per batch: whether each row's float outputs are all finite
        for o in outputs or ():
            if o.dtype.kind == "f":
                rows = np.isfinite(o.reshape(len(o), -1)).all(axis=1)
                finite = rows if finite is None else finite & rows
        out: list[Record] = []
        row = 0
        for p in prepared:
            if p.error is not None:
                out.append(Failure(p.path, p.error.kind, p.error.message))
                continue
            values = tuple(o[row] for o in outputs)
            ok = finite is None or finite[row]
            row += 1
            if not ok:
                out.append(Failure(p.path, NON_FINITE_OUTPUT, f"the network's {self.output_name} holds NaN or "
                                   "infinity: the model's weights hold such values, or its arithmetic overflowed"))
                continue
            rec = self.record(p.path, values, weights, labels)
            if getattr(p, "view", None) is not None and isinstance(rec, Success):
                rec = dataclasses.replace(rec, view=p.view)
            out.append(rec)
        return out


def _predictions(probs, indices, labels: Sequence[str]) -> tuple[Prediction, ...]:
    return tuple(Prediction(rank=r + 1, index=int(i), label=labels[int(i)], probability=float(v))
                 for r, (v, i) in enumerate(zip(probs.tolist(), indices.tolist())))


@dataclass(frozen=True)
class Classify(Task):
    """The `topk` most probable classes (None: 5, or every class of a smaller model). `restrict`: class indices
    to predict among (softmax over their logits only, as timm's `--valid-labels`), sorted. `tta`: average the
    probabilities of each image and its mirror image (inference.Predictor.classify)."""

    topk: int | None = None
    restrict: tuple[int, ...] | None = None
    tta: bool = False

    name: ClassVar[str] = "classify"

    def __post_init__(self) -> None:
        if self.restrict is not None:
            object.__setattr__(self, "restrict", tuple(sorted(self.restrict)))

    def bind(self, num_classes: int) -> "Classify":
        if self.restrict is not None:
            if max(self.restrict) >= num_classes:
                raise UsageError(f"class {max(self.restrict)} is not one of the model's {num_classes} classes")
            if self.topk is not None and self.topk > len(self.restrict):
                raise UsageError(f"--topk {self.topk} is more than the {len(self.restrict)} classes predictions "
                                 "are restricted to")
        if self.topk is not None and self.topk > num_classes:
            raise UsageError(f"--topk {self.topk} is more than the model's {num_classes} classes")
        return dataclasses.replace(self, topk=topk_for(self.topk, num_classes))

    def compute(self, predictor, pixels) -> tuple:
        probs, indices = predictor.classify(pixels, self.topk, self.restrict, self.tta)
        return probs.numpy(), indices.numpy()

    def record(self, path, row, weights, labels) -> Record:
        pre = weights.preprocess
        return Success(path, weights.arch.name, weights.name, pre.resize, pre.crop,
                       _predictions(row[0], row[1], labels))


@dataclass(frozen=True)
class Embed(Task):
    """The vector the classifier head receives (float32, the network's feature width: 512 or 2048)."""

    name: ClassVar[str] = "embed"
    output_name: ClassVar[str] = "embedding"

    def compute(self, predictor, pixels) -> tuple:
        return (predictor.embed(pixels).numpy(),)

    def record(self, path, row, weights, labels) -> Record:
        return Embedding(path, weights.arch.name, weights.name, row[0])


@dataclass(frozen=True)
class Explain(Task):
    """Classify's top-k from the very same forward pass, and a class activation map of `target` (None: each
    image's top-1) by `method` (gradcam, gradcam++ or layercam) at block `layer` (`position`: its index among all
    residual blocks); cam.py. Local engine only: it needs the activations' gradients."""

    method: str
    layer: str
    position: int
    target: int | None = None
    topk: int | None = None

    name: ClassVar[str] = "explain"
    engines: ClassVar[frozenset[str]] = frozenset({"local"})

    def bind(self, num_classes: int) -> "Explain":
        if self.target is not None and self.target >= num_classes:
            raise UsageError(f"--target {self.target} is not one of the model's {num_classes} classes")
        if self.topk is not None and self.topk > num_classes:
            raise UsageError(f"--topk {self.topk} is more than the model's {num_classes} classes")
        return dataclasses.replace(self, topk=topk_for(self.topk, num_classes))

    def compute(self, predictor, pixels) -> tuple:
        probs, indices, targets, target_probs, maps = predictor.explain(pixels, self.method, self.position,
                                                                         self.target, self.topk)
        return probs.numpy(), indices.numpy(), targets.numpy(), target_probs.numpy(), maps.numpy()

    def record(self, path, row, weights, labels) -> Record:
        probs, indices, target, target_prob, cam = row
        pre = weights.preprocess
        explanation = Explanation(self.method, self.layer, int(target), labels[int(target)], float(target_prob),
                                  cam)
        return Success(path, weights.arch.name, weights.name, pre.resize, pre.crop,
                       _predictions(probs, indices, labels), explanation)
