"""The streaming classification pipeline: decode in parallel, batch, infer, emit in input order.

    sources (lazy) --> decode workers (threads) --> in-order window --> batches --> Predictor --> records

- Decoding and resizing run in a thread pool: Pillow releases the GIL while it decodes and resamples, and
  threads cost no start-up (a worker process would pay the 2 s torch import, or pickling). The model runs in
  the calling thread while the pool decodes the next batches, so both overlap.
- At most `window` inputs are in flight, so memory stays flat however many images there are.
- Every source yields exactly one record, in input order: a failure waits in its place until the batch
  around it is classified, and never shifts anyone else's result.
- `stop` (set on SIGINT/SIGTERM) stops taking new inputs; everything already decoded is still classified and
  emitted, then the iterator ends.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


def classify(sources: Iterable[Source], predictor, *, arch: str, weights: str, labels, batch_size: int = 8,
             workers: int | None = None, fast_decode: bool = False, stop: threading.Event | None = None,
             ) -> Iterator[Record]:
    """One record per source, in order, streamed batch by batch."""
    pre: Preprocess = predictor.preprocess
    workers = workers or default_workers()
    window = 2 * batch_size + workers  # enough decoded ahead to keep the model fed while it runs a batch
    stop = stop or threading.Event()
    it = iter(sources)
    exhausted = False
    in_flight: deque[Future] = deque()
    pending: list[Prepared] = []
    n_ok = 0

    def flush() -> list[Record]:
        nonlocal pending, n_ok
        batch, pending, n_ok = pending, [], 0
        if any(p.error is None for p in batch):
            probs, indices = predictor(stack(batch, pre.crop))
        else:
            probs = indices = None
        return to_records(batch, probs, indices, arch=arch, weights=weights, labels=labels, pre=pre)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        try:
            while True:
                while not exhausted and not stop.is_set() and len(in_flight) < window:
                    src = next(it, None)
                    if src is None:
                        exhausted = True
                    else:
                        in_flight.append(pool.submit(prepare, src, pre, fast_decode))
                if not in_flight:
                    break
                item = in_flight.popleft().result()
                pending.append(item)
                if item.error is None:
                    n_ok += 1
                if n_ok >= batch_size:
                    yield from flush()
                if stop.is_set():
                    break
            # Interrupted: inputs already decoding finish and are still results, up to the first one that
            # never started (the rest are left for --resume; no gap opens in the output order).
            for fut in in_flight:
                fut.cancel()
            for fut in in_flight:
                if fut.cancelled():
                    break
                pending.append(fut.result())
            if pending:
                yield from flush()
        finally:
            for fut in in_flight:
                fut.cancel()
