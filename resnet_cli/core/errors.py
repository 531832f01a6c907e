"""Every error the library raises, and the exit codes the CLI maps them to.

Two families:
- `UsageError`: the run as asked cannot start (unknown architecture, bad option, weights that do not fit).
  The CLI prints one line and exits 2.
- `InputError`: one input cannot be classified (missing, truncated, not an image, ...). The pipeline turns it
  into a failure record in that input's place and goes on; the run exits 1 at the end.
`WeightsUnavailable`: published weights that are neither cached nor downloadable (the network failed, the
download's hash did not match, or the network is off). A longer, multi-line explanation (what to fetch, where to
put it); the CLI exits 3, so that a script tells an outage from a typo.
"""

from __future__ import annotations

import enum


PROG = "resnet-classify"
# Why nothing was fetched, in every message that says so (URL inputs, weights, `download`).
OFFLINE_REASON = "the network is off (--offline or RESNET_CLASSIFY_OFFLINE=1)"


class ExitCode(enum.IntEnum):
    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    WEIGHTS_UNAVAILABLE = 3  # published weights not cached and not downloadable: network, hash, offline
    INTERRUPTED = 130  # 128 + SIGINT
    BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (| head), as cat reports it
    TERMINATED = 143  # 128 + SIGTERM


class ResnetCliError(Exception):
    """Base of the errors this package raises on purpose."""


class UsageError(ResnetCliError):
    """The run cannot start as asked; exit code 2."""


class WeightsUnavailable(UsageError):
    """Published weights are neither cached nor downloadable (offline, no network, bad hash); exit code 3."""


class OutputClosed(ResnetCliError):
    """stdout's reader went away (`| head`): the run ends quietly with exit code 141."""


class Interrupted(BaseException):
    """A second SIGINT/SIGTERM: stop at once. A BaseException, like KeyboardInterrupt, so that no handler meant
    for errors swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class InputError(ResnetCliError):
    """One input cannot be classified. `kind` is the stable, documented error type of the failure record."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# The documented vocabulary of failure-record error types (README, "Failure records").
NOT_FOUND = "not_found"
PERMISSION_DENIED = "permission_denied"
IS_A_DIRECTORY = "is_a_directory"
EMPTY_FILE = "empty_file"
TRUNCATED = "truncated"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
DECOMPRESSION_BOMB = "decompression_bomb"
CORRUPT = "corrupt"
DOWNLOAD_FAILED = "download_failed"
TOO_LARGE = "too_large"
TIMEOUT = "timeout"
UNREADABLE_FOLDER = "unreadable_folder"
WRITE_FAILED = "write_failed"  # a file the tool names for this input (explain's overlay or map) cannot be written
NON_FINITE_OUTPUT = "non_finite_output"  # the network gave NaN or infinity (weights that hold them, an overflow)
INTERNAL_ERROR = "internal_error"  # a bug in this program; please report it
