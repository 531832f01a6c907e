"""Files that appear whole or not at all: the one place a file is written beside its name and renamed over it
(outputs, overlays, the trained model, downloaded weights, the feature cache), and the name-length rules that go
with it."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from typing import BinaryIO


def can_replace_atomically(path: str) -> bool:
    """Rename-over is right for a regular file (or a new one); /dev/stdout, a FIFO or a device must be written
    into, never replaced."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


TEMP_EXTRA = 14  # what mkstemp adds to a name here: "." before, "." + 8 random characters + ".tmp" after


def cut_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (surrogate escapes count as the byte they stand for), never
    inside a character."""
    size = 0
    for i, ch in enumerate(text):
        size += len(ch.encode("utf-8", "surrogateescape"))
        if size > limit:
            return text[:i]
    return text


def name_max(folder: str) -> int:
    """The longest file name (bytes) `folder`'s file system allows (255 where it cannot say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


class AtomicFile:
    """A binary file that appears at `path` only when committed (temporary file + fsync + rename), with the
    permissions a plain new file gets (0666 less the umask), or those of the file it replaces.

    `follow=True` (a name the user gave): a symlink at `path` keeps pointing where it did, and the file it
    points to is the one replaced. `follow=False` (a name the tool chose: an overlay, a map): a symlink, or
    anything but a regular file, at `path` is refused (OSError ELOOP / EEXIST) and never followed; the rename
    replaces the name itself, never a file a link points to.

    Raises OSError when the temporary file cannot be created (ENAMETOOLONG for a name the file system refuses;
    the temporary name is cut to fit, so only the target's own name can be too long)."""

    def __init__(self, path: str, *, follow: bool = True) -> None:
        if follow:
            path = os.path.realpath(path)
        else:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.ELOOP, "a symlink is already at this name; it is not followed", path)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EEXIST, "something other than a file is already at this name", path)
        self.path = path
        self.follow = follow
        folder = os.path.dirname(os.path.abspath(path))
        name = os.path.basename(path)
        if len(name.encode("utf-8", "surrogateescape")) > name_max(folder):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
        prefix = "." + cut_bytes(name, name_max(folder) - TEMP_EXTRA) + "."
        fd, self.tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        try:
            st = os.stat(self.path) if self.follow else os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            os.chmod(self.tmp, st.st_mode & 0o7777)
        else:
            os.chmod(self.tmp, 0o666 & ~current_umask())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """Committed when the block ends normally, else aborted (the earlier file, if any, stays)."""
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
