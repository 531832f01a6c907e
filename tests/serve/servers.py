"""Helper of the serve tests: a real server on 127.0.0.1 (uvicorn in a thread on a free port, stopped at the
end)."""

from __future__ import annotations

import threading
import time


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
