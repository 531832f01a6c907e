"""The local engine: decode threads feeding the model in this process (pipeline.py has the details).

The Decoder starts before torch is imported and the weights are loaded, so the first images are decoded on
the core those leave idle; the model then runs in the calling thread while the threads decode ahead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ..job import Job, default_batch_size, topk_for
from ..pipeline import Decoder, classify, default_window, default_workers
from ..records import Record


def records(job: Job, stop: threading.Event) -> Iterator[Record]:
    workers = job.workers or default_workers()
    decoder = Decoder(job.inputs, job.weights.preprocess, workers=workers, fast_decode=job.fast_decode,
                      window=default_window(job.batch_size or 64, workers), stop=stop, network=job.network,
                      view=job.view)
    try:
        from ..inference import Predictor, load_for

        device, dtype, loaded = load_for(job)
        batch_size = default_batch_size(job.batch_size, device.type)
        predictor = Predictor(loaded.module, job.weights.preprocess, device=device, dtype=dtype,
                              topk=topk_for(job.topk, loaded.num_classes),
                              restrict=job.restrict)
        yield from classify(decoder, predictor, weights=job.weights, labels=loaded.labels, batch_size=batch_size,
                            stop=stop, embed=job.embed, explain=job.explain, on_batch=job.on_batch)
    finally:
        decoder.close()
        job.inputs.close()
