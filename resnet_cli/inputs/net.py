"""HTTP, for image URLs and weight downloads: bounded in time and size, never a shell, never a hang.

Every request runs against a `_Deadline`: a watchdog thread that, when the time is up, shuts down the
request's sockets, which wakes whatever read is blocked on them (resolving the host, connecting, the TLS
handshake, the status line and headers, the body, chunked trailers, redirects). `socket` timeouts alone bound
each read, not the request: a server that sends one header byte a second, or trailer lines without end,
would hold a run for ever. Name resolution, which no socket timeout covers, runs in a helper thread with the
same deadline. Only http(s) is spoken, redirects included.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..core import __version__
from ..core import errors as E
from ..core.files import AtomicFile
from ..core.console import printable
from ..core.errors import InputError, first_line

USER_AGENT = f"resnet-classify/{__version__}"
# One URL input, all of it (resolving, connecting, headers, body, trailers, redirects), in seconds.
URL_TIMEOUT_S = 20.0
MAX_URL_BYTES = 64 * 1024 * 1024  # an image URL larger than this is refused while it streams
_SERVER_TEXT_CHARS = 200  # how much of a server's own words (a reason phrase, a bad status line) a message quotes
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f]")  # what http.client refuses to send: spaces and control characters


class NetworkError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _quote(text: object) -> str:
    """A server's text (or a URL) for a one-line message: escaped for the terminal, cut short."""
    shown = printable(str(text))
    return shown if len(shown) <= _SERVER_TEXT_CHARS else shown[:_SERVER_TEXT_CHARS] + "..."


class _Deadline:
    """The time one request may take. A watchdog thread shuts down every socket `watch`ed once the time is up
    (each is watched through a duplicate descriptor of its own, so it never touches a descriptor number the
    request has closed and the system has given to someone else). `extend` moves the end (a download that
    makes progress); `close` ends the watch. Use as a context manager."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="url-deadline", daemon=True).start()

    def __enter__(self) -> "_Deadline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _watch(self) -> None:
        while not self._done.wait(max(0.0, self.end - time.monotonic())):
            if time.monotonic() >= self.end:
                with self._lock:
                    if self._done.is_set():
                        return
                    self.expired = True
                    for sock in self._sockets:
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass  # not connected yet (the connect's own timeout ends it), or already closed
                return

    def remaining(self) -> float:
        """Seconds left; `TimeoutError` when there are none."""
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise TimeoutError(f"no complete answer within {self.seconds:g} s")
        return left

    def check(self) -> None:
        """`TimeoutError` if the watchdog has fired: a read it cut short looks like an early end of the body."""
        if self.expired:
            raise TimeoutError(f"no complete answer within {self.seconds:g} s")

    def extend(self) -> None:
        self.end = time.monotonic() + self.seconds

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                raise TimeoutError(f"no complete answer within {self.seconds:g} s")
            self._sockets.append(sock.dup())

    def close(self) -> None:
        with self._lock:
            self._done.set()
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _resolve(host: str, port: int, deadline: _Deadline) -> list:
    """getaddrinfo in a helper thread: no socket timeout covers name resolution."""
    result: list = []

    def run() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller below
            result.append(exc)

    t = threading.Thread(target=run, name="url-resolve", daemon=True)
    t.start()
    t.join(deadline.remaining())
    if not result:
        raise TimeoutError(f"resolving {host} took over {deadline.seconds:g} s")
    if isinstance(result[0], BaseException):
        raise OSError(f"cannot resolve {host} ({result[0]})")
    return result[0]


def _connect(deadline: _Deadline, address: tuple[str, int], timeout: object = None,
             source_address: tuple[str, int] | None = None) -> socket.socket:
    """socket.create_connection under the deadline (http.client's `_create_connection`): every socket is
    watched from before its connect, so the TLS handshake and the proxy tunnel are covered too."""
    host, port = address
    if not 0 < port < 65536:  # getaddrinfo would quietly wrap 99999 round to 34463
        raise OSError(f"port {port} is out of range (1-65535)")
    last: OSError | None = None
    for family, type_, proto, _, sockaddr in _resolve(host, port, deadline):
        sock = socket.socket(family, type_, proto)
        try:
            deadline.watch(sock)
            sock.settimeout(deadline.remaining())
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            sock.settimeout(deadline.seconds)  # each later read; the watchdog bounds the whole
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            deadline.remaining()  # out of time: no next address
    raise last or OSError(f"no address for {host}")


def _connection(cls: type, deadline: _Deadline) -> Callable[..., http.client.HTTPConnection]:
    def make(host: str, **kwargs) -> http.client.HTTPConnection:
        conn = cls(host, **kwargs)
        conn._create_connection = functools.partial(_connect, deadline)
        return conn
    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(_connection(http.client.HTTPConnection, self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(_connection(http.client.HTTPSConnection, self.deadline), req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects go to http(s) only (urllib alone would follow ftp://), 10 at most."""

    inf_msg = "too many redirects, the last: "

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri")
        if target is not None and urllib.parse.urlsplit(target).scheme.lower() not in ("", "http", "https"):
            fp.close()
            raise NetworkError(E.DOWNLOAD_FAILED, f"redirected to a URL that is not http(s): {_quote(target)}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _ascii_url(url: str) -> str:
    """The URL as it is sent: its path and query percent-encoded where they are not ASCII (as a browser
    does); `NetworkError` for what cannot be a URL (no host, a bad port, a space or a control character)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise NetworkError(E.DOWNLOAD_FAILED, f"invalid URL ({_quote(exc)})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise NetworkError(E.DOWNLOAD_FAILED, f"not an http(s) URL: {_quote(url)}")
    if _NOT_IN_URL.search(url):
        raise NetworkError(E.DOWNLOAD_FAILED, "invalid URL: it contains a space or a control character "
                                              "(a space is written %20)")
    encode = functools.partial(urllib.parse.quote, safe="".join(map(chr, range(33, 127))))
    return urllib.parse.urlunsplit(parts._replace(path=encode(parts.path), query=encode(parts.query),
                                                  fragment=""))


def _failure(exc: BaseException, deadline: _Deadline) -> NetworkError:
    """What went wrong with a request, as a NetworkError whose message quotes the server only escaped."""
    if isinstance(exc, NetworkError):
        return exc
    if deadline.expired or isinstance(exc, (socket.timeout, TimeoutError)):
        return NetworkError(E.TIMEOUT, f"no complete answer within {deadline.seconds:g} s")
    if isinstance(exc, urllib.error.HTTPError):
        return NetworkError(E.DOWNLOAD_FAILED, f"HTTP {exc.code} {_quote(exc.reason)}".rstrip())
    if isinstance(exc, urllib.error.URLError):
        if isinstance(exc.reason, BaseException):
            return _failure(exc.reason, deadline)
        return NetworkError(E.DOWNLOAD_FAILED, f"cannot connect ({_quote(exc.reason)})")
    if isinstance(exc, http.client.IncompleteRead):  # also what a chunk size that is no number becomes
        return NetworkError(E.DOWNLOAD_FAILED, "malformed response from the server (its chunked body is damaged "
                                               "or ends early)")
    if isinstance(exc, http.client.InvalidURL):
        return NetworkError(E.DOWNLOAD_FAILED, f"invalid URL ({_quote(first_line(exc))})")
    if isinstance(exc, (http.client.HTTPException, ValueError)):  # ValueError: a Location that is no URL
        return NetworkError(E.DOWNLOAD_FAILED,
                            f"malformed response from the server ({type(exc).__name__}: {_quote(first_line(exc))})")
    return NetworkError(E.DOWNLOAD_FAILED, f"connection failed ({_quote(first_line(exc))})")


# Everything a request can raise on a hostile server or a bad URL (OverflowError: a port out of range).
_REQUEST_ERRORS = (OSError, http.client.HTTPException, ValueError, OverflowError, NetworkError)


def _open(url: str, deadline: _Deadline):
    """The response to GET `url` (status 2xx, after redirects), under `deadline`; NetworkError otherwise."""
    sent = _ascii_url(url)
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _HTTPHandler(deadline), _HTTPSHandler(deadline),
                    urllib.request.HTTPDefaultErrorHandler(), _Redirects(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    req = urllib.request.Request(sent, headers={"User-Agent": USER_AGENT})
    try:
        return opener.open(req, timeout=deadline.seconds)
    except _REQUEST_ERRORS as exc:
        raise _failure(exc, deadline) from None


def _check_complete(resp: http.client.HTTPResponse, received: int) -> None:
    """NetworkError when the connection closed before the Content-Length the server announced."""
    if resp.length:  # what is still owed
        raise NetworkError(E.DOWNLOAD_FAILED, f"the connection closed after {received:,} of the "
                                              f"{received + resp.length:,} bytes announced")


def fetch_image_bytes(url: str, *, timeout: float | None = None, max_bytes: int | None = None) -> bytes:
    """The body of an image URL; an `InputError` when it cannot be had within the time and size limits.

    `timeout` (seconds, default `URL_TIMEOUT_S`) bounds the whole request: resolving, connecting, status line
    and headers, body, chunked trailers and redirects. A server that trickles a byte at a time is cut off
    (`timeout`); a malformed response or URL is `download_failed`; a body over `max_bytes` (default
    `MAX_URL_BYTES`) is `too_large`. Whether the body is an image is the decoder's call (it sniffs HTML, SVG,
    text), not the Content-Type's."""
    timeout = URL_TIMEOUT_S if timeout is None else timeout
    max_bytes = MAX_URL_BYTES if max_bytes is None else max_bytes
    chunks: list[bytes] = []
    size = 0
    with _Deadline(timeout) as deadline:
        try:
            with _open(url, deadline) as resp:
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise InputError(E.TOO_LARGE,
                                     f"{int(length):,} bytes, over the {max_bytes:,}-byte limit for URLs")
                while chunk := resp.read1(65536):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        raise InputError(E.TOO_LARGE, f"over the {max_bytes:,}-byte limit for URLs")
                deadline.check()
                _check_complete(resp, size)
        except _REQUEST_ERRORS as exc:
            failure = _failure(exc, deadline)
            raise InputError(failure.kind, failure.args[0]) from None
    return b"".join(chunks)


def download(url: str, dest: Path, *, sha256_prefix: str | None, timeout: float = 30.0,
             progress: Callable[[int, int | None], None] | None = None) -> None:
    """Stream `url` to `dest` atomically (files.AtomicFile: a temporary file in the same folder, then a rename),
    checking that the SHA-256 of the body starts with `sha256_prefix` (torchvision's file-name convention) before
    the rename.
    `timeout` (seconds) bounds the request up to its headers, then each stretch without progress (a large
    file may take longer as a whole). Raises `NetworkError` (kind `timeout` or `download_failed`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with AtomicFile(str(dest)) as atomic:
        out = atomic.file
        with _Deadline(timeout) as deadline, _open(url, deadline) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while True:
                try:  # errors of the request only: one writing the file is not the network's
                    chunk = resp.read1(1 << 20)
                    if not chunk:
                        deadline.check()
                        _check_complete(resp, done)
                        break
                except _REQUEST_ERRORS as exc:
                    raise _failure(exc, deadline) from None
                deadline.extend()
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise NetworkError(
                E.DOWNLOAD_FAILED,
                f"hash mismatch: expected a sha256 beginning {sha256_prefix} (the whole of what the file's name "
                f"gives), got sha256 {digest.hexdigest()}",
            )
