"""The Python API: the command line's records, from a script or a notebook (docs/python.md).

    resnet_cli.classify(inputs, ...) -> Iterator[dict]   what `classify --format jsonl` writes, one dict a line
    resnet_cli.embed(inputs, ...)    -> Iterator[dict]   what `embed -o FILE.jsonl` writes
    resnet_cli.Classifier(...)                           the weights loaded once; call it on PIL images, uint8
                                                         arrays or file paths, again and again

The functions run the very job the commands run (`build_job`, which the classify and embed commands call
too), on the same engines, so a record is the command's to the byte once written with `writers.dumps`. The
`Classifier` runs the same `inference.Predictor` (fixed forward shape) and the same tasks, so its record for
a file equals the command's.

Nothing heavy at import: torch is imported when the first model loads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Union

from .core.errors import UsageError
from .run.job import InputOptions, Job, ModelOptions, RunOptions, make_job
from .run.tasks import Classify, Embed, Task

__all__ = ["Classifier", "build_job", "classify", "embed"]

# The options `classify` and `embed` take as keyword arguments, by their command-line names (--batch-size is
# batch_size); `labels` is classify's only (embedding records carry no class names).
MODEL_OPTIONS = ("resize", "crop", "labels")
RUN_OPTIONS = ("device", "precision", "batch_size", "workers", "fast_decode", "engine", "ray_address",
               "offline", "quiet")
LISTING_OPTIONS = ("recursive",)


def build_job(inputs: Sequence[str], task: Task, model: ModelOptions, run: RunOptions = RunOptions(), *,
              listing: InputOptions = InputOptions(), view_size: int | None = None) -> Job:
    """The job of a run: the weights resolved once (`ModelOptions.resolve`), the options checked together
    (`job.make_job`). What the classify and embed commands and this module's functions all do; nothing is
    listed, decoded or loaded yet. Raises UsageError."""
    return make_job(list(inputs), model.resolve(), task, run, listing=listing, view_size=view_size)


def _positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"{name} must be a positive integer, not {value!r}")


def _inputs(inputs: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    args = [os.fspath(i) for i in inputs]
    if "-" in args:
        raise UsageError("- (paths read from stdin) is the command line's; pass the paths themselves")
    return args


def _groups(function: str, arch: str | None, weights: str, options: dict, allowed: Sequence[str]
            ) -> tuple[ModelOptions, RunOptions, InputOptions]:
    """The option groups of a call's keyword arguments. Unknown names raise TypeError (as Python does for an
    unexpected keyword argument); bad values UsageError."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r} "
                        f"(options: {', '.join(allowed)})")
    for name in ("resize", "crop", "batch_size", "workers"):
        _positive(name, options.get(name))
    model = ModelOptions(arch, os.fspath(weights), options.get("resize"), options.get("crop"),
                         None if options.get("labels") is None else os.fspath(options["labels"]))
    run = RunOptions(**{k: options[k] for k in RUN_OPTIONS if k in options})  # checks its values itself
    return model, run, InputOptions(recursive=bool(options.get("recursive", False)))


def _dicts(job: Job, each=None) -> Iterator[dict]:
    """The job's records as dicts, streamed; closing the generator stops the engine and lets go of its
    threads."""
    from .run import engines

    stop = threading.Event()
    records = engines.records(job, stop)
    try:
        for rec in records:
            yield (each(rec) if each is not None else rec).to_dict()
    finally:
        stop.set()
        records.close()


def classify(inputs: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]], *, arch: str | None = None,
             weights: str = "DEFAULT", topk: int | None = None, tta: bool = False,
             **options: Any) -> Iterator[dict]:
    """Classify `inputs` as `resnet-classify classify` does: files, folders (`recursive=True` descends), globs,
    http(s):// URLs, s3:// and gs:// objects; a str is one input. Yields, in input order, one dict per input:
    exactly what `--format jsonl` writes on that input's line (`{"path", "arch", "weights", "preprocess",
    "topk"}`, or a failure `{"path", "error": {"type", "message"}}`; docs/output.md). `tta`: as `--tta`, the
    mean of the probabilities of each image and its mirror image.

    `options`, by their command-line names: resize, crop, labels, device ("auto", "cpu", "cuda", "cuda:N",
    "mps"), precision ("fp32", "bf16", "fp16"), batch_size, workers, fast_decode, engine ("local", "ray"),
    ray_address, offline, recursive, quiet.

    The options are checked and the weights resolved when this is called (UsageError: unknown architecture,
    bad option value, weights unavailable offline); an unknown option name raises TypeError. The engine starts
    at the first `next()`; the model loads then (UsageError there: no such device here, a checkpoint that does
    not fit). Closing the generator early (or leaving a `for` loop) stops the engine and lets go of its
    threads. `-` (paths from stdin) is refused: pass the paths."""
    model, run, listing = _groups("classify", arch, weights, options, MODEL_OPTIONS + RUN_OPTIONS + LISTING_OPTIONS)
    _positive("topk", topk)
    return _dicts(build_job(_inputs(inputs), Classify(topk, tta=bool(tta)), model, run, listing=listing))


def embed(inputs: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]], *, arch: str | None = None,
          weights: str = "DEFAULT", normalize: bool = False, **options: Any) -> Iterator[dict]:
    """The embedding of each input as `resnet-classify embed -o FILE.jsonl` writes it: in input order, one dict
    per input, `{"path", "arch", "weights", "embedding": [float, ...]}` (the vector the classifier head
    receives, float32 values: 512 numbers for resnet18/34, 2048 for the others; unit length with
    `normalize=True`, as `--normalize`) or a failure `{"path", "error": {"type", "message"}}`.

    Inputs, options, errors and closing as `classify`, but for `labels`, which embeddings do not use."""
    model, run, listing = _groups("embed", arch, weights, options, MODEL_OPTIONS[:2] + RUN_OPTIONS + LISTING_OPTIONS)
    each = (lambda rec: rec.normalized() if rec.ok else rec) if normalize else None
    return _dicts(build_job(_inputs(inputs), Embed(), model, run, listing=listing), each)


Image = Any  # a PIL.Image.Image, a file path (str or os.PathLike), or uint8 pixels (numpy array or torch tensor)


class Classifier:
    """A model loaded once, for repeated calls in a notebook or a script:

        clf = Classifier("resnet50")            # published weights, fetched once into the cache
        clf(Image.open("cat.jpg", formats=["JPEG"]))  # -> [{"path": "<image 0>", "topk": [...], ...}]
        clf(["a.jpg", "b.png"])                 # paths: the command's records, to the byte

    `arch`, `weights`, `topk`, `device`, `precision`, `labels`, `resize`, `crop` and `offline` mean what the
    command-line options do. The constructor resolves and loads the weights and checks the device and the
    precision on this machine (UsageError for each problem, as the command line; an unknown `device` or
    `precision` spelling too).

    What each image may be (a call takes one of them, or a list of any mix):
    - a file path (str or os.PathLike) or an http(s)://, s3:// or gs:// URL: decoded exactly as the command
      decodes it (EXIF orientation, colour modes), then `preprocess.resize_and_crop`; the record's "path" is
      the path as given. A file that cannot be read gives the command's failure record, not an exception.
    - a PIL image: its EXIF orientation applied and converted to RGB as a decoded file is, then
      `preprocess.resize_and_crop` (the PIL half of torchvision's `weights.transforms()`): a PIL image opened
      from a file gets that file's record (but its "path"). Named "<image N>", N its position in the call
      (from 0).
    - uint8 pixels already resized and cropped: a numpy array or a torch tensor, (crop, crop, 3) for one image
      or (N, crop, crop, 3) for N, RGB, channels last (what `resize_and_crop` gives, as an array). Also named
      "<image N>", each image of a stack counting as one. Any other shape or dtype (floats: their scale is
      ambiguous; use `np.asarray(pil_image)`) raises TypeError.
    """

    def __init__(self, arch: str | None = None, weights: str = "DEFAULT", *, topk: int | None = None,
                 device: str = "auto", precision: str = "fp32", labels: str | None = None,
                 resize: int | None = None, crop: int | None = None, offline: bool = False) -> None:
        from .models.inference import load_for
        from .models.runtimes import make_predictor

        model, run, _ = _groups("Classifier", arch, weights, {
            "device": device, "precision": precision, "labels": labels, "resize": resize, "crop": crop,
            "offline": offline, "quiet": True}, MODEL_OPTIONS + RUN_OPTIONS)
        _positive("topk", topk)
        job = build_job([], Classify(topk), model, run)
        device_, dtype, loaded, task = load_for(job)
        self._job = job
        self._classify = task
        self._embed = Embed().bind(loaded.num_classes)
        self._labels = loaded.labels
        self._predictor = make_predictor(loaded.module, job.weights.preprocess, device=device_, dtype=dtype)

    @property
    def arch(self) -> str:
        """The architecture's name (resnet18 ... wide_resnet101_2)."""
        return self._job.weights.arch.name

    @property
    def weights(self) -> str:
        """The weights' name as records give it: ResNet50_Weights.IMAGENET1K_V2, or the checkpoint's path."""
        return self._job.weights.name

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names, by class index."""
        return self._labels

    @property
    def preprocess(self):
        """registry.Preprocess: resize (shorter side, pixels), crop (square, pixels), mean, std, interpolation."""
        return self._job.weights.preprocess

    @property
    def device(self) -> str:
        """The torch device the network runs on ("cpu", "cuda:0", ...)."""
        return str(self._predictor.device)

    def __call__(self, images: Image | Sequence[Image]) -> list[dict]:
        """`classify(images)`."""
        return self.classify(images)

    def classify(self, images: Image | Sequence[Image]) -> list[dict]:
        """One record dict per image, in order, as `classify --format jsonl` writes them (class docstring)."""
        return self._run(self._classify, images)

    def embed(self, images: Image | Sequence[Image], *, normalize: bool = False) -> list[dict]:
        """One embedding record dict per image, in order, as `embed -o FILE.jsonl` writes them (`normalize`:
        unit length, as `--normalize`)."""
        records = self._run(self._embed, images, dicts=False)
        return [(r.normalized() if normalize and r.ok else r).to_dict() for r in records]

    def _run(self, task: Task, images, dicts: bool = True) -> list:
        from .run.pipeline import stack

        prepared = list(self._prepare(images))
        records = []
        crop = self.preprocess.crop
        step = self._predictor.chunk * 8  # a bounded stack at a time; the forward shape is fixed either way
        for start in range(0, len(prepared), step):
            part = prepared[start:start + step]
            outputs = None
            if any(p.error is None for p in part):
                outputs = task.compute(self._predictor, stack(part, crop))
            records.extend(task.records(part, outputs, self._job.weights, self._labels))
        return [r.to_dict() for r in records] if dicts else records

    def _prepare(self, images):
        """pipeline.Prepared for each image, in order."""
        from PIL import Image as PILImage

        from .inputs.images import in_memory
        from .run.pipeline import Prepared, prepare
        from .models.preprocess import resize_and_crop
        from .inputs.sources import Source

        if isinstance(images, (str, os.PathLike, PILImage.Image)) or _is_array(images):
            images = [images]
        pre, crop, n = self.preprocess, self.preprocess.crop, 0
        for item in images:
            if isinstance(item, (str, os.PathLike)):
                yield prepare(Source(os.fspath(item)), pre, network=self._job.network)
            elif isinstance(item, PILImage.Image):
                yield Prepared(f"<image {n}>", resize_and_crop(in_memory(item), pre).tobytes())
                n += 1
            elif _is_array(item):
                pixels = _pixels(item, crop)
                for one in pixels:
                    yield Prepared(f"<image {n}>", one.tobytes())
                    n += 1
            else:
                raise TypeError(f"an image is a PIL image, a file path or uint8 pixels, not {type(item).__name__}")


def _is_array(obj) -> bool:
    return hasattr(obj, "shape") and hasattr(obj, "dtype")


def _pixels(array, crop: int):
    """A (N, crop, crop, 3) uint8 C-contiguous numpy array of a numpy array or a torch tensor."""
    import numpy as np

    if hasattr(array, "detach"):  # a torch tensor, wherever it lives
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8 (0-255, RGB, channels last), not {array.dtype}; "
                        "for a PIL image pass the image itself")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != (crop, crop, 3):
        raise TypeError(f"pixels must be ({crop}, {crop}, 3) or (N, {crop}, {crop}, 3), resized and cropped "
                        f"already; got {tuple(array.shape)} (pass a PIL image to have it resized and cropped)")
    return np.ascontiguousarray(array)
