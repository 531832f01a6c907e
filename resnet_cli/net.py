"""HTTP, for image URLs and weight downloads: bounded in time and size, never a shell, never a hang.

`socket` timeouts do not cover name resolution, and a resolver that never answers would hang the run; the
host is therefore resolved first in a helper thread with a deadline.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import __version__
from . import errors as E
from .errors import InputError

USER_AGENT = f"resnet-classify/{__version__}"
URL_TIMEOUT_S = 20.0
MAX_URL_BYTES = 64 * 1024 * 1024  # an image URL larger than this is refused while it streams


class NetworkError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _resolve_with_deadline(host: str, port: int, timeout: float) -> None:
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            socket.getaddrinfo(host, port)
            result.append(None)
        except BaseException as exc:  # handed to the caller below
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        raise NetworkError(E.TIMEOUT, f"resolving {host} took over {timeout:g} s")
    if isinstance(result[0], BaseException):
        raise NetworkError(E.DOWNLOAD_FAILED, f"cannot resolve {host} ({result[0]})")


def _open(url: str, timeout: float):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NetworkError(E.DOWNLOAD_FAILED, f"not an http(s) URL: {url}")
    _resolve_with_deadline(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout)
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as exc:
        raise NetworkError(E.DOWNLOAD_FAILED, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise NetworkError(E.TIMEOUT, f"no answer within {timeout:g} s") from None
        raise NetworkError(E.DOWNLOAD_FAILED, f"cannot connect ({reason})") from None
    except (socket.timeout, TimeoutError):
        raise NetworkError(E.TIMEOUT, f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise NetworkError(E.DOWNLOAD_FAILED, f"connection failed ({exc})") from None


def fetch_image_bytes(url: str, *, timeout: float | None = None, max_bytes: int | None = None) -> bytes:
    """The body of an image URL; an `InputError` when it cannot be had within the time and size limits.
    `timeout` bounds the whole request, body included: a server that trickles a byte at a time is cut off too.
    Whether the body is an image is the decoder's call (it sniffs HTML, SVG, text), not the Content-Type's."""
    timeout = URL_TIMEOUT_S if timeout is None else timeout
    max_bytes = MAX_URL_BYTES if max_bytes is None else max_bytes
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        with _open(url, timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise InputError(E.TOO_LARGE, f"{int(length):,} bytes, over the {max_bytes:,}-byte limit for URLs")
            while chunk := resp.read1(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise InputError(E.TOO_LARGE, f"over the {max_bytes:,}-byte limit for URLs")
                if time.monotonic() > deadline:
                    raise InputError(E.TIMEOUT, f"download took over {timeout:g} s")
    except NetworkError as exc:
        raise InputError(exc.kind, exc.args[0]) from None
    except (socket.timeout, TimeoutError):
        raise InputError(E.TIMEOUT, f"download stalled for over {timeout:g} s") from None
    except OSError as exc:
        raise InputError(E.DOWNLOAD_FAILED, f"download failed ({exc})") from None
    return b"".join(chunks)


def download(url: str, dest: Path, *, sha256_prefix: str | None, timeout: float = 30.0,
             progress: Callable[[int, int | None], None] | None = None) -> None:
    """Stream `url` to `dest` atomically (temporary file in the same folder, then rename), checking that the
    SHA-256 of the body starts with `sha256_prefix` (torchvision's file-name convention) before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, _open(url, timeout) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise NetworkError(
                E.DOWNLOAD_FAILED,
                f"hash mismatch: expected a sha256 beginning {sha256_prefix} (the whole of what the file's name "
                f"gives), got sha256 {digest.hexdigest()}",
            )
        os.replace(tmp, dest)
    except (socket.timeout, TimeoutError):
        raise NetworkError(E.TIMEOUT, f"download stalled for over {timeout:g} s") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
