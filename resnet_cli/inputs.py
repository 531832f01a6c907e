"""Turning command-line inputs into an ordered, lazy stream of sources.

An input is a file (any extension), a folder (its image files; `recursive` descends), a quoted glob, an
http(s) URL, or `-` for paths read from stdin (one a line, or NUL-separated with `null_separated`).
Order: inputs in the order given; a folder's entries sorted by name, depth-first (a subfolder's files come
where the subfolder's name sorts). Symlinks to folders are followed, each folder scanned once per argument,
so a link loop ends. Inputs that cannot be listed become sources that carry their error, so every input still gets
exactly one record in its place.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from . import errors as E
from .errors import InputError
from .net import is_url

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".heic", ".heif", ".avif",
})
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    path: str  # what the record calls it: the argument as given, or folder + "/" + name
    error: InputError | None = None  # set when the input failed before any decoding (missing, unlistable)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


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


def _expand_one(arg: str, recursive: bool, allow_glob: bool) -> Iterator[Source]:
    seen: set[tuple[int, int]] = set()  # per argument: a folder named twice on the command line is listed twice
    if is_url(arg):
        yield Source(arg)
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


def read_paths(stream: BinaryIO, null_separated: bool = False) -> Iterator[str]:
    """Paths from a byte stream, lazily: one a line (CR LF tolerated) or NUL-separated; blank entries skipped.
    Bytes that are not UTF-8 survive (surrogateescape), so the record's path still names the file."""
    sep = b"\0" if null_separated else b"\n"
    buf = b""
    while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
        buf += chunk
        *lines, buf = buf.split(sep)
        for line in lines:
            if not null_separated:
                line = line.rstrip(b"\r")
            if line:
                yield os.fsdecode(line)
    if not null_separated:
        buf = buf.rstrip(b"\r")
    if buf:
        yield os.fsdecode(buf)


def expand(args: Iterable[str], *, recursive: bool = False, null_separated: bool = False,
           stdin: BinaryIO | None = None) -> Iterator[Source]:
    """Every source the arguments name, in order, lazily (a folder is listed when the stream reaches it)."""
    for arg in args:
        if arg == "-":
            for line in read_paths(stdin if stdin is not None else sys.stdin.buffer, null_separated):
                yield from _expand_one(line, recursive, allow_glob=False)
        else:
            yield from _expand_one(arg, recursive, allow_glob=True)
