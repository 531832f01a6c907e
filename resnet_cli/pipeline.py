"""The streaming classification pipeline: decode in parallel, batch, infer, emit in input order.

    sources (lazy) --> Decoder (feeder thread + decode threads, in-order window) --> batches --> Predictor
        --> records

- Decoding and resizing run in a thread pool: Pillow releases the GIL while it decodes and resamples, and
  threads cost no start-up (a worker process would pay the 2 s torch import, or pickling). The model runs in
  the calling thread while the pool decodes the next batches, so both overlap.
- The Decoder starts before the model is loaded: while one core imports torch (about 2 s), the other decodes.
- At most `window` inputs are decoded ahead, so memory stays flat however many images there are.
- Every source yields exactly one record, in input order: a failure waits in its place until the batch
  around it is classified, and never shifts anyone else's result.
- On SIGINT/SIGTERM the Decoder stops taking new inputs; everything already decoded is still classified and
  emitted, then the stream ends.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import INTERNAL_ERROR, InputError
from .images import open_bytes, open_local
from .inputs import Source
from .net import fetch_image_bytes, is_url
from .preprocess import resize_and_crop
from .records import Failure, Prediction, Record, Success
from .registry import Preprocess

# --fast-decode lets a JPEG decode at a reduced scale while its shorter side stays at least this many times
# the resize target, before the exact resize (see README, "Speed").
FAST_DECODE_FACTOR = 2


@dataclass(frozen=True)
class Prepared:
    path: str
    pixels: bytes | None  # crop*crop*3 RGB bytes, row-major
    error: InputError | None = None


def prepare(source: Source, pre: Preprocess, fast_decode: bool = False) -> Prepared:
    """Decode and resize one source (runs in a worker thread). Never raises for a bad input."""
    if source.error is not None:
        return Prepared(source.path, None, source.error)
    draft = FAST_DECODE_FACTOR * pre.resize if fast_decode else None
    try:
        if is_url(source.path):
            img = open_bytes(fetch_image_bytes(source.path), draft_min_side=draft)
        else:
            img = open_local(source.path, draft_min_side=draft)
        return Prepared(source.path, resize_and_crop(img, pre).tobytes())
    except InputError as exc:
        return Prepared(source.path, None, exc)
    except Exception as exc:  # a bug here must cost one record, not the run
        return Prepared(source.path, None, InputError(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))


def to_records(prepared: list[Prepared], probs, indices, *, arch: str, weights: str, labels, pre: Preprocess
               ) -> list[Record]:
    """Records for a run of prepared inputs, in order; `probs`/`indices` hold one row per successful input."""
    out: list[Record] = []
    row = 0
    for p in prepared:
        if p.error is not None:
            out.append(Failure(p.path, p.error.kind, p.error.message))
            continue
        topk = tuple(
            Prediction(rank=r + 1, index=int(i), label=labels[int(i)], probability=float(v))
            for r, (v, i) in enumerate(zip(probs[row].tolist(), indices[row].tolist()))
        )
        out.append(Success(p.path, arch, weights, pre.resize, pre.crop, topk))
        row += 1
    return out


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


class Decoder:
    """Decodes sources in a thread pool as soon as it is created, at most `window` ahead of the consumer, and
    yields them in input order. Sources are pulled by a feeder thread, so work starts while the caller is
    still busy (importing torch, loading weights).

    Once the `stop` event is set (by the signal handler) it takes no new sources; iteration ends after the inputs
    already decoding, up to the first one that never started (no gap opens in the output order; the rest are
    left for --resume)."""

    def __init__(self, sources: Iterable[Source], pre: Preprocess, *, workers: int | None = None,
                 window: int | None = None, fast_decode: bool = False, stop: threading.Event | None = None
                 ) -> None:
        self.workers = workers or default_workers()
        self._window = threading.Semaphore(window or default_window(8, self.workers))
        self._futures: queue.Queue = queue.Queue()
        self._stop = stop or threading.Event()  # shared with the signal handler
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        self._feeder = threading.Thread(target=self._feed, args=(iter(sources), pre, fast_decode),
                                        name="decode-feeder", daemon=True)
        self._feeder.start()

    def _feed(self, sources, pre: Preprocess, fast_decode: bool) -> None:
        try:
            for src in sources:
                while not self._window.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._futures.put(self._pool.submit(prepare, src, pre, fast_decode))
        except BaseException as exc:  # listing failed in a way no record covers (stdin closed badly): re-raised
            self._futures.put(exc)
        finally:
            self._futures.put(_END)

    def __iter__(self) -> Iterator[Prepared]:
        while True:
            item = self._futures.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if self._stop.is_set() and item.cancel():
                return  # never started: this input and all after it are left undone (close() cancels them)
            prepared = item.result()
            self._window.release()
            yield prepared

    def close(self) -> None:
        """Stop and release the threads (pending work is cancelled, work in progress finishes)."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        # The feeder may be blocked reading stdin (`tail -f list | resnet-classify -`); it is a daemon thread
        # and submits nothing more once stopped, so it is not waited for long.
        self._feeder.join(timeout=0.5)


def classify(decoded: Iterable[Prepared], predictor, *, arch: str, weights: str, labels, batch_size: int = 8,
             stop: threading.Event | None = None) -> Iterator[Record]:
    """One record per decoded input, in order, streamed batch by batch. Once `stop` is set, the batch being
    gathered is classified and emitted and the stream ends: at most one more forward pass after a Ctrl-C; what
    else was decoded ahead is left for --resume."""
    pre: Preprocess = predictor.preprocess
    pending: list[Prepared] = []
    n_ok = 0
    for item in decoded:
        pending.append(item)
        if item.error is None:
            n_ok += 1
        if n_ok >= batch_size:
            yield from _records(pending, predictor, arch=arch, weights=weights, labels=labels, pre=pre)
            pending, n_ok = [], 0
        if stop is not None and stop.is_set():
            break
    if pending:
        yield from _records(pending, predictor, arch=arch, weights=weights, labels=labels, pre=pre)


def _records(batch: list[Prepared], predictor, **kwargs) -> list[Record]:
    if any(p.error is None for p in batch):
        probs, indices = predictor(stack(batch, kwargs["pre"].crop))
    else:
        probs = indices = None
    return to_records(batch, probs, indices, **kwargs)
