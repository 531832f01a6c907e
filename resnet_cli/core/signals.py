"""Ctrl-C and SIGTERM: finish cleanly on the first, end at once on the second.

The first signal asks the run to stop taking work, and says so on stderr: what is finished is written (a
prefix of the inputs, which `--resume` continues) and the exit code is 130 (SIGINT) or 143 (SIGTERM). A second
one, of either kind, raises `Interrupted` in the main thread, whatever it is doing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import PROG, ExitCode, Interrupted

STOPPING = f"{PROG}: stopping after the images in progress (send the signal again to stop at once)\n"


class StopSignals:
    def __init__(self) -> None:
        self.event = threading.Event()  # what engines watch
        self.signum: int | None = None
        # How the first signal's line is said: straight to stderr's file descriptor by default; a live progress
        # bar replaces it (commands/stream.py) so that the line goes above the bar, not onto it.
        self.say = say

    def handler(self, signum, frame) -> None:
        if self.event.is_set():
            raise Interrupted(self.signum or signum)
        self.signum = signum
        self.event.set()
        self.say(STOPPING)

    @contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def exit_code(self, failed: int) -> ExitCode:
        """The run's exit code, decided here only: interrupted, else some inputs failed, else OK."""
        if self.signum is not None:
            return ExitCode.INTERRUPTED if self.signum == signal.SIGINT else ExitCode.TERMINATED
        return ExitCode.SOME_FAILED if failed else ExitCode.OK


def say(text: str) -> None:
    """A line on stderr from a signal handler: straight to the file descriptor, since the handler may run
    while the main thread is inside a buffered write to stderr (which would raise a reentrant-call error)."""
    try:
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))
    except (OSError, ValueError, AttributeError):
        pass  # stderr closed, or not a file (a test's StringIO): the exit code still tells
