"""Helpers of the serve tests: a real server on 127.0.0.1 (uvicorn in a thread on a free port, stopped at the end),
and the command line's own output to compare its answers with."""

from __future__ import annotations

import io
import os
import sys
import threading
import time

import pytest

from resnet_cli.serve.app import Limits, create_app
from resnet_cli.serve.model import Model


class Running:
    """`app` served by uvicorn in a thread on a free loopback port (classify's signal handling is the main
    thread's: tests/serve/test_shutdown.py runs the command in a process of its own)."""

    def __init__(self, app) -> None:
        import uvicorn

        from resnet_cli.serve import server

        sock = server.listen("127.0.0.1", 0)
        self.url = server.url_of(sock)
        self.server = server.Server(uvicorn.Config(app, log_config=server.log_config(True), lifespan="on",
                                                   timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


def serve(model: Model, limits: Limits = Limits()) -> Running:
    return Running(create_app(model, limits))


def run_cli(*argv, cwd=None) -> tuple[int, bytes, str]:
    """The command line in this process (as the `cli` fixture, usable from module-scoped fixtures)."""
    from resnet_cli.cli import run

    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", stdout)
        mp.setattr(sys, "stderr", stderr)
        if cwd is not None:
            mp.chdir(cwd)
        code = run([os.fspath(a) for a in argv])
        stdout.flush()
        stderr.flush()
    return code, out.getvalue(), err.getvalue().decode("utf-8", "replace")
