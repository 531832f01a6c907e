"""Engines: where the network runs. Each is a module with one entry point,

    records(job: Job, stop: threading.Event) -> Iterator[Record]

one record per input of `job.inputs`, in input order, streamed; after `stop` is set, a prefix of them. An
engine writes nothing: the command that asked for the records writes them and decides the exit code.

    local   decode threads + the model in this process (engines/local.py)
    ray     the same decoding and model on a Ray cluster (engines/ray.py)

A new engine is a new module here with the same function, and a member of `job.Engine`; tasks (tasks.py) name
the engines that can run them.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator

from ..job import Job
from ...core.records import Record


def records(job: Job, stop: threading.Event) -> Iterator[Record]:
    """The records of `job` from the engine it names (imported only now: Ray is heavy)."""
    engine = importlib.import_module(f".{job.options.engine.value}", __name__)
    return engine.records(job, stop)
