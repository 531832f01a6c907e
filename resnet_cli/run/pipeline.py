"""The streaming classification pipeline: decode in parallel, batch, infer, emit in input order.

    sources (lazy) --> Decoder (feeder thread + decode threads, in-order window) --> batches
        --> the job's task (tasks.py) on the Predictor --> records

- Decoding and resizing run in a thread pool: Pillow releases the GIL while it decodes and resamples, and
  threads cost no start-up (a worker process would pay the 2 s torch import, or pickling). The model runs in
  the calling thread while the pool decodes the next batches, so both overlap.
- The Decoder starts before the model is loaded: while one core imports torch (about 2 s), the other decodes.
- At most `window` inputs are decoded ahead, so memory stays flat however many images there are.
- Every source yields exactly one record, in input order: a failure waits in its place until every input
  before it is out, and never shifts anyone else's result.
- On SIGINT/SIGTERM the Decoder stops taking new inputs and the batch being gathered is the last one
  classified; the output is a prefix of the inputs (what --resume continues from).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from ..core.errors import INTERNAL_ERROR, InputError
from ..inputs.images import open_bytes, open_local
from ..models.preprocess import resize_and_crop, view_of
from ..inputs.readers import Network
from ..core.records import Record, View
from ..models.registry import Preprocess
from ..models.resolve import Resolved
from ..inputs.sources import Source

# --fast-decode lets a JPEG decode at a reduced scale while its shorter side stays at least this many times
# the resize target, before the exact resize (see README, "Speed").
FAST_DECODE_FACTOR = 2


@dataclass(frozen=True)
class Prepared:
    path: str
    pixels: bytes | None  # crop*crop*3 RGB bytes, row-major
    error: InputError | None = None
    view: View | None = None  # with `view_size`: the picture for an overlay or a report thumbnail


def prepare(source: Source, pre: Preprocess, fast_decode: bool = False, network: Network = Network(),
            view_size: int | None = None) -> Prepared:
    """Decode and resize one source (runs in a worker thread, or a Ray task). Never raises for a bad input.
    `network.read` gives the bytes of a network input by its scheme, or None for a local file. `view_size`:
    also keep the picture, at most that many pixels on its longer side (preprocess.view_of)."""
    if source.error is not None:
        return Prepared(source.path, None, source.error)
    draft = FAST_DECODE_FACTOR * pre.resize if fast_decode else None
    try:
        data = network.read(source.path)
        if data is not None:
            img = open_bytes(data, draft_min_side=draft)
        else:
            img = open_local(source.path, draft_min_side=draft)
        return Prepared(source.path, resize_and_crop(img, pre).tobytes(),
                        view=view_of(img, pre, view_size) if view_size else None)
    except InputError as exc:
        return Prepared(source.path, None, exc)
    except Exception as exc:  # a bug here must cost one record, not the run
        return Prepared(source.path, None, InputError(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))


def prepare_bytes(path: str, data: bytes, pre: Preprocess) -> Prepared:
    """`prepare` for an image given as bytes (an upload to the server): the same decoder, limits (format
    allowlist, pixel bomb guard) and resize, so the same bytes give the same pixels as the file would; `path`
    names it in its record. Never raises for a bad input."""
    try:
        return Prepared(path, resize_and_crop(open_bytes(data), pre).tobytes())
    except InputError as exc:
        return Prepared(path, None, exc)
    except Exception as exc:  # a bug here must cost one record, not the server
        return Prepared(path, None, InputError(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))


def stack(prepared: list[Prepared], crop: int):
    """The successful inputs' pixels as one (N, crop, crop, 3) uint8 tensor (a single copy)."""
    import torch

    ok = [p.pixels for p in prepared if p.error is None]
    return torch.frombuffer(bytearray(b"".join(ok)), dtype=torch.uint8).view(len(ok), crop, crop, 3)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def default_window(batch_size: int, workers: int) -> int:
    """How many inputs may be decoded ahead: a few batches, and at least 64 so that the decode threads use
    the core that sits idle while torch imports (about 2 s, a few hundred small photos' worth of decoding).
    Each decoded input is only its crop (150 kB at 224): memory stays bounded whatever the job's size."""
    return max(4 * batch_size, 64) + workers


_END = object()
IDLE = object()  # yielded by Decoder when the next input is not ready yet: a cue to flush a partial batch


class Decoder:
    """Decodes sources in a thread pool as soon as it is created, at most `window` ahead of the consumer, and
    yields them in input order. Sources are pulled by a feeder thread, so work starts while the caller is
    still busy (importing torch, loading weights), and a slow source (stdin fed by hand, a slow producer)
    never blocks the consumer: while the next input is not ready, the iterator yields IDLE every `idle_s`.

    Once the `stop` event is set (by the signal handler) it takes no new sources and iteration ends at the
    first input that is not decoded yet: nothing waits for a decode in progress (it could be a slow URL), and
    no gap opens in the output order (the rest is left for --resume)."""

    def __init__(self, sources: Iterable[Source], pre: Preprocess, *, workers: int | None = None,
                 window: int | None = None, fast_decode: bool = False, stop: threading.Event | None = None,
                 network: Network = Network(), idle_s: float = 0.25, view_size: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._window = threading.Semaphore(window or default_window(8, self.workers))
        self._futures: queue.Queue = queue.Queue()
        self._stop = stop or threading.Event()  # shared with the signal handler
        self._idle_s = idle_s
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        self._feeder = threading.Thread(target=self._feed, name="decode-feeder", daemon=True,
                                        args=(iter(sources), pre, fast_decode, network, view_size))
        self._feeder.start()

    def _feed(self, sources, pre: Preprocess, fast_decode: bool, network: Network, view_size: int | None
              ) -> None:
        try:
            for src in sources:
                while not self._window.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._futures.put(self._pool.submit(prepare, src, pre, fast_decode, network, view_size))
        except BaseException as exc:  # listing failed in a way no record covers: re-raised in the consumer
            self._futures.put(exc)
        finally:
            self._futures.put(_END)

    def __iter__(self) -> Iterator[Prepared | object]:
        while True:
            try:
                item = self._futures.get(timeout=self._idle_s)
            except queue.Empty:
                if self._stop.is_set():
                    return
                yield IDLE
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            while not item.done():
                if self._stop.is_set():
                    return
                wait([item], timeout=self._idle_s)
                if not item.done():
                    yield IDLE
            self._window.release()
            yield item.result()

    def close(self) -> None:
        """Stop and let go of the threads: queued work is cancelled; work in progress is not waited for (the
        pool's threads finish it on their own; the CLI exits without joining them)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def run_task(decoded: Iterable[Prepared | object], predictor, task, *, weights: Resolved,
             labels: tuple[str, ...], batch_size: int = 8, stop: threading.Event | None = None,
             on_batch=None) -> Iterator[Record]:
    """One record per decoded input, in order, streamed, computed by `task` (tasks.Task) with `predictor`: a
    batch is computed when it is full, or as soon as the decoder has nothing ready (IDLE), so results never wait
    on a slow source; failures that no success precedes are emitted at once. Once `stop` is set, the batch
    being gathered is computed and emitted and the stream ends: at most one more forward pass after a Ctrl-C.
    `on_batch(n)`: called after each forward pass, with its n images, before their records are emitted
    (evaluate's throughput)."""
    def records(batch: list[Prepared]) -> list[Record]:
        outputs = None
        if any(p.error is None for p in batch):
            outputs = task.compute(predictor, stack(batch, weights.preprocess.crop))
            if on_batch is not None:
                on_batch(sum(p.error is None for p in batch))
        return task.records(batch, outputs, weights, labels)

    pending: list[Prepared] = []
    n_ok = 0
    for item in decoded:
        if item is IDLE:
            if n_ok:
                yield from records(pending)
                pending, n_ok = [], 0
            continue
        if item.error is not None and not pending:
            yield from records([item])
        else:
            pending.append(item)
            n_ok += item.error is None
        if n_ok >= batch_size:
            yield from records(pending)
            pending, n_ok = [], 0
        if stop is not None and stop.is_set():
            break
    if pending:
        yield from records(pending)
