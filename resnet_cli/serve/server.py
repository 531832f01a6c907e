"""Running the application under uvicorn: logging without tracebacks, and classify's signal rules.

SIGTERM or SIGINT: the server stops accepting connections, answers every request in flight (each within its
--timeout) and exits 0; a second signal exits at once (128 + the signal's number), as classify does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

import uvicorn

from ..core.errors import PROG

STOPPING = (f"{PROG}: stopping: answering the requests in flight, accepting no more (send the signal again to "
            "stop at once)\n")


class OneLine(logging.Filter):
    """Log records without tracebacks: an exception a record carries becomes one line after its message
    (uvicorn logs a malformed request's parser error with its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc = record.exc_info[1]
            if exc is not None:
                text = str(exc).strip().splitlines()
                record.msg = f"{record.getMessage()} ({type(exc).__name__}{': ' + text[0] if text else ''})"
                record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def log_config(quiet: bool) -> dict:
    """uvicorn's logging: its own format, every line on stderr, tracebacks turned into one line, no access log
    and no start-up lines when quiet."""
    from uvicorn.config import LOGGING_CONFIG

    config = {**LOGGING_CONFIG}
    config["filters"] = {"one_line": {"()": f"{__name__}.OneLine"}}
    # every line on stderr (uvicorn writes its access log to stdout)
    config["handlers"] = {name: {**h, "filters": ["one_line"], "stream": "ext://sys.stderr"}
                          for name, h in LOGGING_CONFIG["handlers"].items()}
    config["loggers"] = {**LOGGING_CONFIG["loggers"],
                         "resnet_cli.serve": {"handlers": ["default"], "level": "INFO", "propagate": False}}
    if quiet:
        config["loggers"]["uvicorn.access"] = {**config["loggers"]["uvicorn.access"], "level": "WARNING"}
        config["loggers"]["uvicorn.error"] = {**config["loggers"]["uvicorn.error"], "level": "WARNING"}
    return config


def _say(text: str) -> None:
    try:
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))
    except (OSError, ValueError, AttributeError):
        pass


class Server(uvicorn.Server):
    """uvicorn's server with classify's signal rules (module docstring). uvicorn's own re-raises the signal
    once it has shut down, which would end the process with 143 instead of 0."""

    def handle_signal(self, signum, frame) -> None:
        if self.should_exit:
            _say(f"{PROG}: interrupted\n")
            os._exit(128 + signum)
        self.should_exit = True
        _say(STOPPING)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self.handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def listen(host: str, port: int):
    """A listening socket on host:port (0: a free port). Raises UsageError when it cannot be had."""
    import socket

    from ..core.errors import UsageError

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def url_of(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(app, sock, *, timeout_s: float, quiet: bool = False) -> None:
    """Serve `app` on the listening socket `sock` until a signal (module docstring). In-flight requests get up
    to `timeout_s` seconds to finish after the first signal."""
    config = uvicorn.Config(app, log_config=log_config(quiet), lifespan="on", server_header=False,
                            timeout_graceful_shutdown=max(1, int(timeout_s + 0.999)))
    Server(config).run(sockets=[sock])
