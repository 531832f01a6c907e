"""One classification job from options to exit code: model, pipeline, writer, stderr, signals, progress.

Kept apart from `cli.py` so the CLI module imports nothing heavy (`--help` never loads torch) and so the
Ray engine and tests can run a job without a terminal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from .errors import PROG, ExitCode, Interrupted, UsageError
from .inputs import Source, expand
from .records import Failure, Record
from .writers import Format, check_resumable, format_for_output, open_writer, printable, read_records


@dataclass
class ClassifyOptions:
    inputs: list[str]
    arch: str | None = None
    weights: str = "DEFAULT"
    topk: int = 5
    format: Format | None = None
    output: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    recursive: bool = False
    null_separated: bool = False
    offline: bool = False
    labels: str | None = None
    resume: bool = False
    precision: str = "fp32"
    fast_decode: bool = False
    resize: int | None = None
    crop: int | None = None
    quiet: bool = False
    engine: str = "local"
    ray_address: str | None = None


def eprint(msg: str, stderr: TextIO | None = None) -> None:
    print(f"{PROG}: {msg}", file=stderr or sys.stderr, flush=True)


def failure_line(rec: Failure) -> str:
    return f"{printable(rec.path)}: {rec.type}: {rec.message}".replace("\n", " ")


class StopSignals:
    """SIGINT/SIGTERM: the first one asks the pipeline to stop taking work (what is finished is written, exit
    130/143); a second one, of either kind, ends the run at once (Interrupted)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def handler(self, signum, frame) -> None:
        if self.event.is_set():
            raise Interrupted(self.signum or signum)
        self.signum = signum
        self.event.set()

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @property
    def exit_code(self) -> ExitCode | None:
        if self.signum is None:
            return None
        return ExitCode.INTERRUPTED if self.signum == signal.SIGINT else ExitCode.TERMINATED


def resolve_arch(opts: ClassifyOptions):
    from .registry import DEFAULT_ARCH, arch_of_weights_name, get_arch

    name = opts.arch or arch_of_weights_name(opts.weights) or DEFAULT_ARCH
    return get_arch(name)


def _count(opts: ClassifyOptions, skip: set[str]) -> int | None:
    """How many inputs a run will classify, for the progress bar's ETA (a listing pass: no image is opened)."""
    if "-" in opts.inputs:
        return None  # stdin is read once, as it streams
    return sum(1 for _ in _sources(opts, skip))


def _sources(opts: ClassifyOptions, skip: set[str]) -> Iterator[Source]:
    for src in expand(opts.inputs, recursive=opts.recursive, null_separated=opts.null_separated):
        if src.path not in skip:
            yield src


def default_batch_size(batch_size: int | None, device_type: str) -> int:
    """Images per forward pass (see README, "Speed", for the measurements behind the defaults)."""
    return batch_size or (8 if device_type == "cpu" else 64)


def run_classify(opts: ClassifyOptions, *, stdout: BinaryIO | None = None, stderr: TextIO | None = None) -> int:
    """Run one job; returns the exit code. Raises UsageError for problems found before any input is read."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    arch = resolve_arch(opts)  # cheap checks first: a typo costs no torch import
    if not 1 <= opts.topk:
        raise UsageError(f"--topk must be at least 1 (got {opts.topk})")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {opts.batch_size})")
    if opts.workers is not None and opts.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {opts.workers})")
    if opts.resume and not opts.output:
        raise UsageError("--resume needs --output FILE (the file to resume)")
    if opts.engine not in ("local", "ray"):
        raise UsageError(f"unknown engine {opts.engine!r}; use local or ray")
    if "-" in opts.inputs and sys.stdin is None:
        raise UsageError("- reads paths from stdin, but stdin is closed")
    fmt = opts.format or format_for_output(opts.output, stdout_is_tty=_isatty(stdout))
    if opts.output:
        check_writable(opts.output)
    from .weights import choose, ensure_available

    choice = choose(arch, opts.weights, resize=opts.resize, crop=opts.crop)
    ensure_available(choice, offline=opts.offline)  # offline without the file: fail now, before any input
    previous: list[Record] = []
    if opts.resume:
        previous = [r for r in read_records(opts.output, fmt) if r.ok]
        check_resumable(previous, arch.name, choice.name, choice.preprocess, opts.topk)
    skip = {r.path for r in previous}
    stop = StopSignals()
    with stop.installed():
        if opts.engine == "ray":
            from .ray_engine import import_ray, run_ray

            import_ray()  # a missing Ray is a usage error before any weights are loaded or downloaded
            device, dtype, loaded = _load(opts, choice, here=False)
            return run_ray(opts, loaded, fmt, previous, skip, device=device, dtype=dtype, stop=stop,
                           stdout=stdout, stderr=stderr)

        from .pipeline import Decoder, classify, default_window, default_workers

        # Decoding starts now, on the core that importing torch and loading the weights leave idle.
        workers = opts.workers or default_workers()
        decoder = Decoder(_sources(opts, skip), choice.preprocess, workers=workers, fast_decode=opts.fast_decode,
                          window=default_window(opts.batch_size or 64, workers), stop=stop.event,
                          offline=opts.offline)
        try:
            device, dtype, loaded = _load(opts, choice, here=True)
            from .inference import Predictor

            batch_size = default_batch_size(opts.batch_size, device.type)
            predictor = Predictor(loaded.module, loaded.preprocess, device=device, dtype=dtype, topk=opts.topk,
                                  batch_size=batch_size)
            records = classify(decoder, predictor, arch=arch.name, weights=loaded.weights, labels=loaded.labels,
                               batch_size=batch_size, stop=stop.event)
            failed = emit(records, opts, fmt, previous, stdout=stdout, stderr=stderr)
        finally:
            decoder.close()
    return stop.exit_code or (ExitCode.SOME_FAILED if failed else ExitCode.OK)


def _load(opts: ClassifyOptions, choice, *, here: bool):
    """(device, dtype, LoadedModel). `here=False` for the Ray engine, whose model runs on the cluster's
    machines: the device is parsed, not looked for on this one."""
    from . import inference
    from .weights import load

    device = inference.resolve_device(opts.device, here=here)
    dtype = inference.check_precision(opts.precision, device, here=here)
    loaded = load(choice, offline=opts.offline, labels_file=opts.labels, quiet=opts.quiet)
    if opts.topk > loaded.num_classes:
        raise UsageError(f"--topk {opts.topk} is more than the model's {loaded.num_classes} classes")
    return device, dtype, loaded


def check_writable(output: str) -> None:
    """--output must be creatable (or replaceable) before any work starts, not found out after the model loads."""
    if os.path.isdir(output):
        raise UsageError(f"--output {output} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UsageError(f"--output {output}: folder {folder} does not exist")
    if os.path.exists(output) and not os.access(output, os.W_OK):
        raise UsageError(f"--output {output}: not writable")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--output {output}: cannot create files in {folder}")


def _isatty(stream) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # a BytesIO in tests, a closed stream


def emit(records, opts: ClassifyOptions, fmt: Format, previous: list[Record], *, stdout: BinaryIO,
         stderr: TextIO) -> int:
    """Write records as they come; per-file errors to stderr; a progress bar on a terminal. Returns the number
    of failures. The output is finished (renamed into place) even when the run is interrupted."""
    color = _isatty(stdout) if fmt is Format.table and not opts.output else False
    writer = open_writer(fmt, opts.output, previous=previous, stdout=stdout, color=color)
    progress = _progress(opts, stderr, stdout)
    # A table on the terminal already shows each failure in its place, in red; the same line again on stderr,
    # the same terminal, would only repeat it. (Redirect either stream and the stderr lines are back.)
    errors_to_stderr = not opts.quiet and not (fmt is Format.table and color and _isatty(stderr))
    failed = 0
    ok = False
    try:
        with progress or nullcontext():
            task = None
            if progress is not None:
                task = progress.add_task("classifying", total=_count(opts, {r.path for r in previous}))
            for rec in records:
                writer.write(rec)
                if not rec.ok:
                    failed += 1
                    if errors_to_stderr:
                        line = failure_line(rec)
                        if progress is not None:
                            progress.console.print(f"{PROG}: {line}", markup=False, highlight=False)
                        else:
                            eprint(line, stderr)
                if task is not None:
                    progress.advance(task)
        ok = True
    finally:
        writer.close(ok=ok)  # an unexpected error leaves an earlier --output file untouched
    if writer.count == 0 and fmt is Format.table and not opts.quiet:
        eprint("no images to classify", stderr)
    return failed


def _progress(opts: ClassifyOptions, stderr: TextIO, stdout: BinaryIO):
    """A progress bar on stderr, when stderr is a terminal and the results go elsewhere (a file, a pipe): results
    printed on the same terminal show the progress themselves, and a bar redrawn between them would garble
    both."""
    if opts.quiet or not _isatty(stderr) or (_isatty(stdout) and not opts.output):
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:.1f} img/s", style="progress.data.speed")

    return Progress("{task.description}", BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
                    console=Console(file=stderr), transient=True)
