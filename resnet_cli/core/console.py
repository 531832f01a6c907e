"""What people read: one-line messages on stderr, consoles for tables on stdout, and the one progress bar.

stdout carries only data; progress, warnings and per-file errors go to stderr. Nothing here imports rich
until a console or a bar is actually made, so `--help` and error paths stay instant.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

from .errors import PROG, OutputClosed

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(path: str) -> str:
    """A path for a one-line human message: undecodable bytes as \\xNN, control characters escaped."""
    raw = os.fsencode(path) if LONE_SURROGATE.search(path) else None
    if raw is not None:
        path = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in path)


def eprint(msg: str, stderr: TextIO | None = None) -> None:
    """`resnet-classify: msg` on stderr, flushed at once (a user watching a long run sees it now)."""
    print(f"{PROG}: {msg}", file=stderr or sys.stderr, flush=True)


def isatty(stream) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # a BytesIO in tests, a closed stream


def data_console(**kwargs):
    """A rich Console for data on stdout. Into a pipe or a file, rich would squeeze tables into 80 columns and
    cut cells short ("25,557,…"): there it gets a wide virtual width (tables do not stretch to fill it). A
    closed pipe (`| head`) ends the run with exit code 141, where rich's own handling would exit with 1."""
    from rich.console import Console

    class DataConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise OutputClosed()

    console = DataConsole(**kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console.width = 200
    return console


def progress_bar(stderr: TextIO, *, unit: str = "img"):
    """The progress bar on `stderr` (transient: it is gone when the work is done), led by each task's
    description. `unit="img"` shows images done of the total with their rate; `unit="bytes"` a download's
    size and speed."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:.1f} img/s", style="progress.data.speed")

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(), Rate())
    # markup=False: a description is a file name, and "[x]" in one must print as it is
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), *counts, TimeRemainingColumn(),
                    console=Console(file=stderr), transient=True)


def print_data(render, **console_kwargs) -> None:
    """Print what `render(console)` draws to stdout, as plain lines without the trailing spaces rich pads them
    with (a pipe into `diff` or `grep` should not see them). Rendered first and written in one go: rich, writing
    itself, answers a closed pipe (| head) with exit 1; a plain write lets the CLI answer it with 141."""
    console = data_console(highlight=False, **console_kwargs)
    with console.capture() as captured:
        render(console)
    text = captured.get()
    if not console.is_terminal:
        text = "".join(line.rstrip() + "\n" for line in text.splitlines())
    sys.stdout.write(text)
    sys.stdout.flush()
