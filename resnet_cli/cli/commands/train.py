"""`resnet-classify train`: your own categories, as a new head on a frozen ResNet (a linear probe).

    DATA (labelled.read) --> split (--val or --val-data) --> features: cache (probe.FeatureCache) or
        engines.records(embed job) --> probe.choose_c --> MODEL.safetensors (whole network + metadata)

The saved file holds the network in torchvision's state-dict layout with the new head, and as metadata the
architecture, the base weights, the class names and the preprocessing: `resnet-classify photo.jpg --weights
MODEL.safetensors` and `evaluate DATA --weights MODEL.safetensors` need nothing else.
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Annotated, Optional

import typer

from ...core.console import eprint, isatty, print_data, progress_bar
from ...core.errors import UsageError
from ...models.devices import Precision
from ...run.job import ModelOptions, RunOptions, make_job
from ..options import (ArchOpt, BatchSizeOpt, FastDecodeOpt, LocalDeviceOpt, LocalWorkersOpt, OfflineOpt, PrecisionOpt,
                       QuietOpt, WeightsOpt)
from .stream import RecordStream
from ...outputs.writers import Format, SummaryFormat, choose_format


def command(
    data: Annotated[str, typer.Argument(
        metavar="DATA", show_default=False,
        help="A folder of class folders (DATA/<class>/*.jpg), or a .csv or .jsonl manifest with path and label "
        "columns; any class names.")],
    output: Annotated[str, typer.Option(
        "--output", "-o", metavar="MODEL.safetensors", show_default=False, help="Where the trained model goes.")],
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    val: Annotated[float, typer.Option(
        "--val", min=0.0, max=0.9, metavar="FRACTION",
        help="The share of each class held out to choose the regularisation and report accuracy.")] = 0.2,
    val_data: Annotated[Optional[str], typer.Option(
        "--val-data", metavar="DIR", show_default=False,
        help="A separate labelled validation set (same forms as DATA) instead of --val.")] = None,
    max_iter: Annotated[int, typer.Option(
        "--max-iter", min=1, metavar="N",
        help="The most iterations of the optimiser (L-BFGS over all training features at once), as "
        "scikit-learn's max_iter.")] = 100,
    epochs: Annotated[Optional[int], typer.Option(
        "--epochs", min=1, metavar="N", hidden=True, show_default=False,
        help="Deprecated: the former name of --max-iter.")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Seed of the --val split.")] = 0,
    format: Annotated[Optional[SummaryFormat], typer.Option(
        "--format", "-f", case_sensitive=False, show_default=False,
        help="The report: default a table on a terminal, else json.")] = None,
    device: LocalDeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = None,
    workers: LocalWorkersOpt = None,
    fast_decode: FastDecodeOpt = False,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a classifier for your own classes on the network's features; save it as one .safetensors file."""
    from ...analysis import labelled

    if epochs is not None:
        eprint("--epochs is deprecated: it is --max-iter (the optimiser's iteration cap, not passes over the data)")
        max_iter = epochs

    if not output.endswith(".safetensors"):
        raise UsageError(f"-o {output}: the model is saved as a .safetensors file")
    from ...outputs.paths import check_location, check_outputs

    check_location("--output", output)
    fmt = choose_format(format, pipe=Format.json)
    options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         fast_decode=fast_decode, offline=offline, quiet=quiet)
    resolved = ModelOptions(arch, weights).resolve()
    if resolved.runtime != "torch":
        raise UsageError(f"--weights {weights}: an exported model; train builds on the torch network: "
                         "give the checkpoint it was exported from")
    train_set = labelled.read(data)
    val_set = labelled.read(val_data) if val_data else None
    check_outputs([data] + ([val_data] if val_data else []), [("--output", output)], recursive=True,
                  reads=(*[s.path for s in train_set.sources + (val_set.sources if val_set else [])], weights))
    if train_set.empty:  # as a class whose images are all unreadable (below): never a class dropped unseen
        raise UsageError(f"no usable training image for class{'es' if len(train_set.empty) > 1 else ''} "
                         f"{', '.join(map(repr, train_set.empty))} (its folder in {data} holds no image file)")
    classes = sorted(set(train_set.labels))
    if len(classes) < 2:
        raise UsageError(f"{data}: training needs at least two classes (found {len(classes)})")
    if val_set is not None:
        unknown = sorted(set(val_set.labels) - set(classes))
        if unknown:
            raise UsageError(f"{val_data}: classes not in DATA: {', '.join(map(repr, unknown[:5]))}")
        train_items = list(zip(train_set.sources, train_set.labels))
        val_items = list(zip(val_set.sources, val_set.labels))
    else:
        train_items, val_items = split(list(zip(train_set.sources, train_set.labels)), val, seed)
    features, failures, counts, code = extract([s for s, _ in train_items + val_items], resolved, options)
    index = {c: i for i, c in enumerate(classes)}

    def matrix(items):
        kept = [(features[s.path], index[label]) for s, label in items if s.path in features]
        import numpy as np

        if not kept:
            return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
        return np.stack([v for v, _ in kept]), np.array([y for _, y in kept])

    x_train, y_train = matrix(train_items)
    x_val, y_val = matrix(val_items)
    empty = [c for c in classes if index[c] not in set(y_train.tolist())]
    if empty:
        raise UsageError(f"no usable training image for class{'es' if len(empty) > 1 else ''} "
                         f"{', '.join(map(repr, empty))}" + (f" ({len(failures)} image(s) could not be read)"
                                                             if failures else ""))
    from ...analysis import probe

    bar = progress_bar(sys.stderr) if not quiet and isatty(sys.stderr) else None
    if bar is not None:
        bar.start()
        task = bar.add_task("fitting", total=len(probe.GRID) if len(y_val) else 1)
    try:
        chosen = probe.choose_c(x_train, y_train, x_val, y_val, len(classes), max_iter,
                                progress=(lambda: bar.advance(task)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.stop()
    w, b = chosen["w"], chosen["b"]
    save(output, resolved, classes, w, b, offline=offline, quiet=quiet)
    report = {
        "model": output, "arch": resolved.arch.name, "base_weights": resolved.name, "classes": classes,
        "C": chosen["C"], "train": {"images": int(len(y_train)), "accuracy": probe.accuracy(x_train, y_train, w, b)},
        "val": {"images": int(len(y_val)), "accuracy": probe.accuracy(x_val, y_val, w, b)},
        "features": counts, "failures": failures, "tried": chosen["tried"],
    }
    _print(report, fmt)
    raise typer.Exit(code)


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A stratified split: in each class, `fraction` of its images (rounded, at least one when the class has
    two or more, never all) go to validation, chosen by `seed`; both lists keep DATA's order."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(items):
        by_class.setdefault(label, []).append(i)
    held = set()
    for label in sorted(by_class):
        members = by_class[label]
        n = len(members)
        k = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
        held.update(rng.sample(members, k))
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def extract(sources, resolved, options: RunOptions):
    """({path: vector}, failures, {"cached", "extracted", "failed"}, exit code): each image's features from the
    cache, or through the engine (and then into the cache). The counts are of distinct paths: read from the
    cache, extracted now, could not be read. The exit code is 1 when an image could not be read, as classify's."""
    from ...analysis import probe

    from ...models.devices import check_device, resolve_device

    precision = Precision(options.precision)
    device_type = resolve_device(check_device(options.device, precision)).type  # what "auto" picks here
    cache = probe.FeatureCache(probe.model_key(resolved, precision.value, device_type))
    features, digests, todo = {}, {}, []
    unique = list(dict.fromkeys(sources))  # a path listed twice is read once
    for s in unique:
        digest = None
        if s.error is None and os.path.isfile(s.path):
            try:
                digest = probe.file_digest(s.path)
            except OSError:
                digest = None
        vector = cache.get(digest) if digest else None
        if vector is not None:
            features[s.path] = vector
        else:
            digests[s.path] = digest
            todo.append(s)
    failures, code = [], 0
    if todo:
        from ...run.tasks import Embed

        job = make_job([], resolved, Embed(), options, sources=todo)
        with RecordStream(job, "extracting features", total=len(todo)) as stream:
            for rec in stream:
                if rec.ok:
                    features[rec.path] = rec.vector
                    if digests.get(rec.path):
                        cache.put(digests[rec.path], rec.vector)
                else:
                    failures.append({"path": rec.path, "error": {"type": rec.type, "message": rec.message}})
        if stream.interrupted:  # an interrupted extraction trains nothing; what was cached stays
            raise typer.Exit(stream.exit_code(0))
        code = stream.exit_code(len(failures))
    if failures and not options.quiet:
        eprint(f"{len(failures)} image(s) could not be read and are left out")
    counts = {"cached": len(unique) - len(todo), "extracted": len(todo) - len(failures), "failed": len(failures)}
    return features, failures, counts, code


def save(path: str, resolved, classes: list[str], w, b, *, offline: bool, quiet: bool) -> None:
    """The base network with the new head, in torchvision's layout, and the metadata that makes it
    self-describing; written beside `path` and renamed over it."""
    import torch
    from safetensors.torch import save_file

    from ...models.resolve import METADATA_KEY
    from ...models.weights import load

    module = load(resolved, offline=offline, quiet=quiet).module
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    state["fc.weight"] = torch.from_numpy(w.astype("float32"))
    state["fc.bias"] = torch.from_numpy(b.astype("float32"))
    pre = resolved.preprocess
    meta = {"arch": resolved.arch.name, "base_weights": resolved.name, "labels": classes,
            "preprocess": {"resize": pre.resize, "crop": pre.crop, "mean": list(pre.mean), "std": list(pre.std),
                           "interpolation": pre.interpolation}}
    from ...core.files import AtomicFile

    atomic = AtomicFile(path)  # the permissions of any new file (0666 less the umask), as every output
    try:
        atomic.file.close()
        save_file(state, atomic.tmp, metadata={METADATA_KEY: json.dumps(meta)})
        atomic.file = open(atomic.tmp, "ab")  # for commit's fsync: save_file closes without one
        atomic.commit()
    except BaseException:
        atomic.abort()
        raise


def _print(report: dict, fmt: Format) -> None:
    from ...outputs.writers import dumps

    if fmt is Format.json:
        sys.stdout.write(dumps(report) + "\n")
        sys.stdout.flush()
        return

    def pct(x):
        return "—" if x is None else f"{100 * x:.1f}%"

    def render(console) -> None:
        from rich.markup import escape

        from ...core.console import printable

        console.print(f"[bold]{escape(printable(report['model']))}[/]: {report['arch']} on "
                      f"{escape(printable(report['base_weights']))}, {len(report['classes'])} classes "
                      f"({escape(printable(', '.join(report['classes'])))})", soft_wrap=True)
        console.print(f"train {report['train']['images']} images, accuracy {pct(report['train']['accuracy'])}; "
                      f"validation {report['val']['images']} images, accuracy {pct(report['val']['accuracy'])}; "
                      f"C = {report['C']:g}")
        console.print(f"[dim]features: {report['features']['cached']} from the cache, "
                      f"{report['features']['extracted']} extracted, {report['features']['failed']} could not be "
                      "read (left out)[/]")

    print_data(render)
