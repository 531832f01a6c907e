"""The batcher without HTTP: the model thread held at a gate, so what is queued is known, not guessed from
timings."""

from __future__ import annotations

import threading

import pytest

from resnet_cli.run.pipeline import Prepared
from resnet_cli.serve.batching import Batcher, QueueFull

pytestmark = pytest.mark.timeout(60)


class Gate:
    """A `run` for the batcher that holds each forward pass until `gate` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, task, prepared):
        self.entered.set()
        assert self.gate.wait(30)
        return [p.path for p in prepared]


def one(name: str) -> list[Prepared]:
    return [Prepared(name, b"\0")]


def test_a_request_whose_caller_gave_up_leaves_the_queue_wherever_it_stands():
    run = Gate()
    depths: list[int] = []
    batcher = Batcher(run, chunk=1, max_batch=1, max_wait_s=0, max_queue=2, on_depth=depths.append)
    try:
        running = batcher.submit("classify", one("running"))
        assert run.entered.wait(30)  # the model thread holds it: the queue is empty
        a = batcher.submit("classify", one("a"))
        b = batcher.submit("classify", one("b"))
        assert batcher.depth == 2
        assert b.cancel()  # b's --timeout passed; a, ahead of it, is still wanted
        assert batcher.depth == 1 and depths[-1] == 1
        c = batcher.submit("classify", one("c"))  # fits now: b no longer counts
        with pytest.raises(QueueFull):
            batcher.submit("classify", one("d"))
        run.gate.set()
        assert running.result(30) == ["running"]
        assert a.result(30) == ["a"] and c.result(30) == ["c"]
        assert batcher.depth == 0 and depths[-1] == 0
    finally:
        run.gate.set()
        batcher.close(10)
