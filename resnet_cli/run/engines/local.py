"""The local engine: decode threads feeding the model in this process (pipeline.py has the details).

The Decoder starts before torch is imported and the weights are loaded, so the first images are decoded on
the core those leave idle; the model then runs in the calling thread while the threads decode ahead.
It runs every task (tasks.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ...models.devices import default_batch_size
from ..job import Job
from ..pipeline import Decoder, default_window, default_workers, run_task
from ...core.records import Record


def records(job: Job, stop: threading.Event) -> Iterator[Record]:
    opts = job.options
    workers = opts.workers or default_workers()
    decoder = Decoder(job.inputs, job.weights.preprocess, workers=workers, fast_decode=opts.fast_decode,
                      window=default_window(opts.batch_size or 64, workers), stop=stop, network=job.network,
                      view_size=job.view_size)
    try:
        from ...models.inference import load_for
        from ...models.runtimes import make_predictor

        device, dtype, loaded, task = load_for(job)
        predictor = make_predictor(loaded.module, job.weights.preprocess, device=device, dtype=dtype)
        yield from run_task(decoder, predictor, task, weights=job.weights, labels=loaded.labels,
                            batch_size=default_batch_size(opts.batch_size, device.type), stop=stop,
                            on_batch=job.on_batch)
    finally:
        decoder.close()
        job.inputs.close()
