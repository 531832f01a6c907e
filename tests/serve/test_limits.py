"""The server's limits through real HTTP: a full queue gets 503 with Retry-After, a request past --timeout gets
504 and its queued work is never run, a body over --max-upload-mb gets 413 before it is read to the end. The
model is held at a gate, so that what is queued and what is running is known, not guessed from timings."""

from __future__ import annotations

import select
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from checkpoints import PHOTOS
from resnet_cli.serve.app import Limits
from servers import serve

pytestmark = pytest.mark.timeout(120)


class Gated:
    """The model, its forward passes held until `gate` is set; `entered` is set when one waits there."""

    def __init__(self, model) -> None:
        self._model = model
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def records(self, task, prepared):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(60)
        return self._model.records(task, prepared)


@pytest.fixture(scope="module")
def gated(resnet18):
    model = Gated(resnet18)
    running = serve(model, Limits(max_batch=1, max_queue=1, timeout_s=2, max_upload=1 << 20))
    yield running, model
    model.gate.set()
    running.stop()


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_full_queue_503_then_timeout_504_drops_the_queued_work(gated):
    running, model = gated
    url = running.url
    photo = PHOTOS[0].read_bytes()
    answers: dict[str, httpx.Response] = {}

    def post(name: str) -> None:
        answers[name] = httpx.post(url + "/v1/classify", content=photo, timeout=30,
                                   headers={"Content-Type": "image/png", "X-Filename": name})

    first = threading.Thread(target=post, args=("running",))
    first.start()
    assert model.entered.wait(30)  # the model thread holds the first request
    second = threading.Thread(target=post, args=("queued",))
    second.start()
    wait_for(lambda: metric(url, "resnet_classify_queue_depth") == 1, "the second request was not queued")

    full = httpx.post(url + "/v1/classify", content=photo, headers={"Content-Type": "image/png"})
    assert full.status_code == 503 and full.json()["error"]["type"] == "queue_full"
    assert int(full.headers["retry-after"]) >= 1

    first.join(30)
    second.join(30)
    for name in ("running", "queued"):  # --timeout 2 passed for both
        assert answers[name].status_code == 504, name
        assert answers[name].json()["error"]["type"] == "timeout"
    model.gate.set()
    wait_for(lambda: metric(url, "resnet_classify_queue_depth") == 0, "the queue did not empty")
    after = httpx.post(url + "/v1/classify", content=photo, headers={"Content-Type": "image/png"})
    assert after.status_code == 200  # the server goes on
    assert model.calls == 2  # the first request's batch and this one: the timed-out queued one never ran
    assert metric(url, 'resnet_classify_failures_total{type="timeout"}') == 2
    assert metric(url, 'resnet_classify_failures_total{type="queue_full"}') == 1


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    return sock


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_body_over_the_limit_gets_413_before_it_is_sent(gated):
    running, _ = gated
    # Content-Length says 8 MB; the client sends a few bytes of it and waits: the answer comes at once.
    with _connect(running.url) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 8388608\r\n\r\n" + b"\xff\xd8\xff" + b"\0" * 1000)
        assert _status(sock) == 413
    # No length given (chunked): the server counts as it reads, and answers once past the limit.
    sent = 0
    with _connect(running.url) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"\0" * 65536
        while sent < 16 << 20 and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        assert _status(sock) == 413
    assert sent < 16 << 20  # answered long before the client was done
    r = httpx.post(running.url + "/v1/classify", content=b"\0" * (2 << 20), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
