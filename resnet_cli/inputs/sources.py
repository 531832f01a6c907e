"""Turning command-line inputs into an ordered stream of sources, listed once.

An input is a file (any extension), a folder (its image files; `recursive` descends), a quoted glob, an
http(s) URL, an `s3://` or `gs://` object or prefix (listed like a folder, through `cloud`), or `-` for paths
read from stdin (one a line, or NUL-separated with `null_separated`). With `--offline` a network input is
not listed: it becomes one source that fails without a request (`readers.Network`).
Order: inputs in the order given; a folder's entries sorted by name, depth-first (a subfolder's files come
where the subfolder's name sorts). Symlinks to folders are followed, each folder scanned once per argument,
so a link loop ends. Other systems' leftovers (`is_leftover`: `__MACOSX`, `._*`, `.DS_Store`, ...) are skipped
when a folder is listed. Inputs that cannot be listed become sources that carry their error, so every input
still gets exactly one record in its place.
"""

from __future__ import annotations

import glob
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from . import cloud
from ..core import errors as E
from ..core.errors import InputError
from .readers import CLOUD, HTTP, Network, scheme

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".heic", ".heif", ".avif",
})
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    path: str  # what the record calls it: the argument as given, or folder + "/" + name
    error: InputError | None = None  # set when the input failed before any decoding (missing, unlistable)


_LEFTOVERS = frozenset({"__macosx", ".ds_store", "thumbs.db", "desktop.ini"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_leftover(name: str) -> bool:
    """Whether a folder entry is another system's bookkeeping, never a picture: macOS's `__MACOSX` folder
    (in zip files) and AppleDouble `._NAME` files, `.DS_Store`, and Windows's `Thumbs.db` and `desktop.ini`.
    Listing a folder skips them."""
    return name.startswith("._") or name.casefold() in _LEFTOVERS


def _scan(folder: str, recursive: bool, seen: set[tuple[int, int]]) -> Iterator[Source]:
    try:
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return  # a symlink loop, or a folder reached twice: scanned once
        seen.add(key)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except PermissionError:
        yield Source(folder, InputError(E.UNREADABLE_FOLDER, "folder cannot be read: permission denied"))
        return
    except OSError as exc:
        yield Source(folder, InputError(E.UNREADABLE_FOLDER, f"folder cannot be read: {exc.strerror or exc}"))
        return
    for entry in entries:
        if is_leftover(entry.name):
            continue
        path = os.path.join(folder, entry.name)
        try:
            is_dir = entry.is_dir()  # follows symlinks; False for a dangling one
        except OSError:
            is_dir = False
        if is_dir:
            if recursive:
                yield from _scan(path, recursive, seen)
        elif is_image_name(entry.name):
            yield Source(path)


def _expand_one(arg: str, recursive: bool, allow_glob: bool, network: Network) -> Iterator[Source]:
    seen: set[tuple[int, int]] = set()  # per argument: a folder named twice on the command line is listed twice
    kind = scheme(arg)
    if kind != "local" and not network.allows(arg):
        yield Source(arg, network.refusal())
    elif kind == HTTP:
        yield Source(arg)
    elif kind == CLOUD:
        for path, error in cloud.list_uri(arg, recursive, is_image_name):
            yield Source(path, error)
    elif os.path.isdir(arg):
        yield from _scan(arg, recursive, seen)
    elif allow_glob and _GLOB_CHARS & set(arg) and not os.path.lexists(arg):
        matches = sorted(glob.glob(arg, recursive=recursive))
        if not matches:
            yield Source(arg, InputError(E.NOT_FOUND, "no files match this pattern"))
        # A recursive '**' already matches every file below the folders it matches: listing those folders
        # too would give their files a second record.
        descends = recursive and "**" in arg
        for m in matches:
            if os.path.isdir(m):
                if not descends:
                    yield from _scan(m, recursive, seen)
            else:
                yield Source(m)
    else:
        yield Source(arg)  # a missing file fails when it is opened, with the precise reason


def _path_max() -> int:
    """The system's limit on a path, in bytes with the terminating NUL (4096 on Linux, 1024 on macOS)."""
    try:
        return os.pathconf("/", "PC_PATH_MAX")
    except (AttributeError, OSError, ValueError):
        return 4096


PATH_MAX = _path_max()
_BOM = b"\xef\xbb\xbf"
_SHOWN_BYTES = 64  # how much of a path too long to open a record names


def _too_long(head: bytes, size: int) -> Source:
    """The failure record of a stdin entry of `size` bytes that no file can have; named by its first bytes."""
    return Source(os.fsdecode(head[:_SHOWN_BYTES]) + "...", InputError(
        E.NOT_FOUND, f"no such file: a path of {size:,} bytes on stdin, longer than the system allows "
                     f"({PATH_MAX - 1:,} bytes)"))


def read_paths(stream: BinaryIO, null_separated: bool = False) -> Iterator[str | Source]:
    """Paths from a byte stream, lazily: one a line (CR LF tolerated) or NUL-separated; blank entries skipped,
    a UTF-8 byte-order mark at the start of the stream ignored. Bytes that are not UTF-8 survive
    (surrogateescape), so the record's path still names the file.

    Linear time, bounded memory: an entry longer than the system's path limit (`PATH_MAX` bytes) is not kept
    but counted to its end, and comes out as a failed `Source` (not_found, named by its first bytes)."""
    sep = b"\0" if null_separated else b"\n"
    read = stream.read1 if hasattr(stream, "read1") else stream.read
    keep = PATH_MAX + len(_BOM) + 1  # enough of an entry to tell a path (with a BOM and a CR) from one too long
    pending = bytearray()  # the entry being read, up to `keep` bytes
    size = 0  # its length in bytes, kept or not
    last = b""  # its last byte
    first = True  # the stream's first entry, where a BOM may be

    def finish() -> str | Source | None:
        nonlocal first, size
        entry = bytes(pending)
        if first and entry.startswith(_BOM):
            entry, size = entry[len(_BOM):], size - len(_BOM)
        first = False
        if not null_separated and last == b"\r":
            entry, size = (entry[:-1] if size == len(entry) else entry), size - 1
        if size >= PATH_MAX:
            return _too_long(entry, size)
        return os.fsdecode(entry) if entry else None

    def add(piece: bytes) -> None:
        nonlocal size, last
        if piece:
            size += len(piece)
            last = piece[-1:]
            if len(pending) < keep:
                pending.extend(piece[:keep - len(pending)])

    while chunk := read(65536):
        # Each chunk is split once: the pending entry ends at its first separator, the entries between two
        # separators are whole, and the piece after the last one starts the next pending entry.
        *whole, tail = chunk.split(sep)
        if whole:
            add(whole[0])
            if (item := finish()) is not None:
                yield item
            pending.clear()
            size, last = 0, b""
            for entry in whole[1:]:
                if not null_separated and entry.endswith(b"\r"):
                    entry = entry[:-1]
                if len(entry) >= PATH_MAX:
                    yield _too_long(entry, len(entry))
                elif entry:
                    yield os.fsdecode(entry)
        add(tail)
    if size and (item := finish()) is not None:
        yield item


def expand(args: Iterable[str], *, recursive: bool = False, null_separated: bool = False,
           network: Network = Network(), stdin: BinaryIO | None = None) -> Iterator[Source]:
    """Every source the arguments name, in order, lazily (a folder is listed when the stream reaches it)."""
    for arg in args:
        if arg == "-":
            for line in read_paths(stdin if stdin is not None else sys.stdin.buffer, null_separated):
                if isinstance(line, Source):
                    yield line  # a path no file can have
                else:
                    yield from _expand_one(line, recursive, False, network)
        else:
            yield from _expand_one(arg, recursive, True, network)


_END = object()
# How far listing may run ahead of the consumer: far enough to know the total of any ordinary job at once (for
# the progress bar), bounded so that memory stays flat for a stream of millions of paths (~250 bytes each).
LOOKAHEAD = 100_000


class Listing:
    """The sources of a run, listed once, in a thread of their own that runs ahead of whoever consumes them
    (the decoder, or the Ray driver), by at most LOOKAHEAD sources. `total` is the number of inputs once
    listing is complete (None before, and for stdin until it ends), for the progress bar: nothing is listed
    twice.

    With `resume` (--resume's `Resume.claim`), each source's path is put to it, in input order, and what it
    answers goes into `order`: None (the source is yielded), the path (skipped: a kept record takes its
    place) or another mark (yielded, the mark passed on), so that the kept records can be written back where
    they belong (`Resume.in_input_order`).

    Iterating yields the sources in order; an error listing raised no record for is raised in the consumer."""

    def __init__(self, args: Iterable[str], *, recursive: bool = False, null_separated: bool = False,
                 network: Network = Network(), resume: Callable[[str], object] | None = None,
                 stdin: BinaryIO | None = None) -> None:
        self._sources = expand(args, recursive=recursive, null_separated=null_separated, network=network,
                               stdin=stdin)
        self.resume = resume  # may be set until listing starts
        self.order: queue.SimpleQueue = queue.SimpleQueue()
        self._queue: queue.Queue = queue.Queue(maxsize=LOOKAHEAD)
        self._closed = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self.listed = 0
        self.total: int | None = None

    @classmethod
    def of(cls, sources: Iterable[Source], network: Network = Network()) -> "Listing":
        """A listing of sources found already (a labelled data set's images), under the run's network policy:
        offline, a network input fails without a request."""
        listing = cls((), network=network)
        listing._sources = (s if s.error is not None or network.allows(s.path) else Source(s.path, network.refusal())
                            for s in sources)
        return listing

    def start(self) -> "Listing":
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._list, name="list-inputs", daemon=True).start()
        return self

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _list(self) -> None:
        try:
            for src in self._sources:
                if self._closed.is_set():
                    return
                self.listed += 1
                if self.resume is not None:
                    mark = self.resume(src.path)
                    self.order.put(mark)  # before the source: its record never arrives before its place
                    if isinstance(mark, str):
                        continue
                if not self._put(src):
                    return
            self.total = self.listed
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)
        finally:
            self._put(_END)

    def __iter__(self) -> Iterator[Source]:
        self.start()
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop listing (a stopped run): the thread ends at its next source."""
        self._closed.set()
