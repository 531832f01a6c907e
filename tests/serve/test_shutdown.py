"""The command itself in a process of its own: SIGTERM while requests are in flight answers every one of them,
accepts nothing more and exits 0; a second signal ends it at once, as classify does."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from checkpoints import PHOTOS, ROOT

pytestmark = pytest.mark.timeout(180)


class Process:
    """`resnet-classify serve ... --port 0` with its stderr collected line by line."""

    def __init__(self, *args) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "resnet_cli", "serve", "--port", "0", *map(str, args)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 90
        while not any(" on http://" in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        line = next(line for line in self.lines if " on http://" in line)
        self.url = line.split(" on ", 1)[1].split()[0]
        while httpx.get(self.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def images_received(self) -> float:
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith('resnet_classify_images_total{endpoint="/v1/classify"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def finish(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(10)
        return code


def post(url: str, i: int) -> httpx.Response:
    photo = PHOTOS[i % len(PHOTOS)]
    return httpx.post(url + "/v1/classify", content=photo.read_bytes(), timeout=60,
                      headers={"Content-Type": "application/octet-stream", "X-Filename": str(photo)})


def start_and_signal(server: Process, count: int, signals: list[int]) -> list:
    """`count` requests sent at once; once the server has read them all, `signals` sent. Their answers, or the
    exceptions the clients got."""
    pool = ThreadPoolExecutor(count)
    futures = [pool.submit(post, server.url, i) for i in range(count)]
    deadline = time.monotonic() + 60
    while server.images_received() < count:
        assert time.monotonic() < deadline, "the requests did not arrive"
        time.sleep(0.01)
    for s in signals:
        said = sum("stopping" in line for line in server.lines)
        server.proc.send_signal(s)
        # signals of one kind sent at once merge into one: the next waits until this one is handled
        while sum("stopping" in line for line in server.lines) == said and server.proc.poll() is None:
            assert time.monotonic() < deadline, "the signal was not handled"
            time.sleep(0.005)
    results = []
    for f in futures:
        try:
            results.append(f.result(90))
        except Exception as exc:  # a connection the server dropped
            results.append(exc)
    pool.shutdown()
    return results


def test_sigterm_answers_every_request_in_flight_and_exits_0(checkpoint, cli):
    ckpt = checkpoint("resnet18")
    result = cli("classify", *PHOTOS, "-a", "resnet18", "-w", ckpt, "-f", "jsonl")
    assert result.code == 0, result.stderr
    expected = dict(zip(map(str, PHOTOS), result.stdout.splitlines(keepends=True)))
    server = Process("-a", "resnet18", "-w", ckpt, "--max-batch", "8")
    # what a malformed request costs: a 4xx and one log line, never a traceback (checked in the log below)
    host, port = server.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    r = httpx.post(server.url + "/v1/classify", content=b"--x\r\nbroken",
                   headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    answers = start_and_signal(server, 16, [signal.SIGTERM])
    assert server.finish() == 0, "".join(server.lines)
    for i, r in enumerate(answers):
        assert isinstance(r, httpx.Response), r
        assert r.status_code == 200 and r.content == expected[str(PHOTOS[i % len(PHOTOS)])]
    log = "".join(server.lines)
    stopping = log.index("stopping")
    # the signal landed while requests were in flight: some were answered after it
    assert '"POST /v1/classify HTTP/1.1" 200' in log[stopping:]
    assert "Invalid HTTP request received." in log and "Traceback" not in log
    with pytest.raises(httpx.ConnectError):  # and nothing listens any more
        httpx.get(server.url + "/healthz")


def test_a_second_signal_exits_at_once(checkpoint):
    server = Process("-a", "resnet18", "-w", checkpoint("resnet18"), "--max-batch", "8")
    answers = start_and_signal(server, 48, [signal.SIGTERM, signal.SIGTERM])
    assert server.finish(timeout=30) == 128 + signal.SIGTERM
    assert "interrupted" in "".join(server.lines)
    assert any(not isinstance(r, httpx.Response) for r in answers)  # it did not wait for the requests in flight
