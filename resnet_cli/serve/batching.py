"""Dynamic batching: one model thread, a bounded queue of decoded requests, batches of up to --max-batch images.

    request handlers (event loop) --decode in threads--> Batcher.submit --> queue (at most --max-queue images)
        --> model thread: gather up to --max-batch images --> Model.records --> each request's future

- The network runs fixed-shape chunks (inference.Predictor), so a request's records never depend on the
  requests it was batched with: batching changes the speed, never an answer.
- When the model is free it takes everything queued, up to --max-batch images. It waits for more only while
  the queued images do not fill the network's last chunk, other requests are still being decoded (they are
  on their way), and the oldest queued request has waited less than --max-wait-ms: a lone request on an idle
  server is never held back, and a busy one fills the chunks it pays for anyway.
- A request whose caller gave up (its --timeout passed) is dropped from the queue unrun.
- Requests that ask for different things (classify with another top-k, embed) are run as separate groups.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..run.pipeline import Prepared
from ..run.tasks import Task


class QueueFull(Exception):
    """The queue holds --max-queue images already: the request is refused (HTTP 503)."""


@dataclass(eq=False)
class Work:
    """One request's decoded inputs (failures in place) and the task to run on them. `future` gets the list of
    records, one per input, in order."""

    task: Task
    prepared: Sequence[Prepared]
    future: Future = field(default_factory=Future)
    images: int = 0  # inputs that decoded, the ones the network runs
    queued_at: float = 0.0


class Batcher:
    """The queue and the model thread (module docstring). `run(task, prepared)` computes records (Model.records);
    `chunk`: the network's fixed forward shape; `on_batch(n)`: called with the images of each forward pass;
    `on_depth(n)`: called with the images queued whenever that changes; `first()`: run by the model thread before
    any request (a warm-up)."""

    def __init__(self, run, *, chunk: int, max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch=None, on_depth=None, first=None) -> None:
        self._run = run
        self._first = first
        self.chunk = chunk
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch or (lambda n: None)
        self._on_depth = on_depth or (lambda n: None)
        self._queue: deque[Work] = deque()
        self._queued = 0  # images in the queue
        self._decoding = 0  # requests being decoded: on their way to the queue
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="model", daemon=True)
        self._thread.start()

    # -- the request side -------------------------------------------------------------------------------------
    def decoding(self, delta: int) -> None:
        """A request starts (+1) or ends (-1) decoding: while some are, a partial chunk may wait for them."""
        with self._cond:
            self._decoding += delta
            self._cond.notify_all()

    def submit(self, task: Task, prepared: Sequence[Prepared]) -> Future:
        """Queue a request. Raises QueueFull when its images do not fit in the queue."""
        work = Work(task, prepared, images=sum(p.error is None for p in prepared))
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._queued + work.images > self.max_queue:
                raise QueueFull(f"the queue holds {self._queued} images; at most {self.max_queue}")
            work.queued_at = time.monotonic()
            self._queue.append(work)
            self._queued += work.images
            self._on_depth(self._queued)
            self._cond.notify_all()
        return work.future

    @property
    def depth(self) -> int:
        """Images queued, not yet taken by the model thread."""
        return self._queued

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the model thread (waiting at most `timeout` seconds for it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the model thread -------------------------------------------------------------------------------------
    def _fill(self, queued: int) -> int:
        """How many images would fill the chunks `queued` images occupy (at most --max-batch)."""
        return min(self.max_batch, -(-queued // self.chunk) * self.chunk)

    def _take(self) -> list[Work] | None:
        """The next batch: whole requests, up to --max-batch images (at least one request); None once closed
        and empty."""
        with self._cond:
            while True:
                while self._queue and self._queue[0].future.cancelled():
                    self._drop(self._queue.popleft())
                if self._queue:
                    deadline = self._queue[0].queued_at + self.max_wait_s
                    now = time.monotonic()
                    if (self._queued >= self._fill(self._queued) or not self._decoding or now >= deadline
                            or self._closed):
                        break
                    self._cond.wait(deadline - now)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()
            batch: list[Work] = []
            images = 0
            while self._queue and (not batch or images + self._queue[0].images <= self.max_batch):
                work = self._queue.popleft()
                self._queued -= work.images
                if work.future.set_running_or_notify_cancel():  # False: its caller gave up
                    batch.append(work)
                    images += work.images
            self._on_depth(self._queued)
            return batch

    def _drop(self, work: Work) -> None:
        self._queued -= work.images
        self._on_depth(self._queued)

    def _loop(self) -> None:
        if self._first is not None:
            self._first()
        while (batch := self._take()) is not None:
            groups: dict[Task, list[Work]] = {}
            for work in batch:
                groups.setdefault(work.task, []).append(work)
            for task, works in groups.items():
                prepared = [p for w in works for p in w.prepared]
                try:
                    records = self._run(task, prepared)
                except BaseException as exc:  # the requests get the error; the thread serves the next ones
                    for w in works:
                        w.future.set_exception(exc)
                    continue
                self._on_batch(sum(w.images for w in works))
                start = 0
                for w in works:
                    w.future.set_result(records[start:start + len(w.prepared)])
                    start += len(w.prepared)
