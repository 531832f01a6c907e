"""Where a run may write, checked before anything is read (docs/output.md, "Output files").

Every command lists its outputs (`-o`, `--report`, `--predictions`, `--confusion`, explain's `--out` folder, the
trained model) and its inputs (files and folders on the command line, a labelled data set's images, `--weights`
and `--labels` files) and calls `check` once, before the first image is read:

- each output's location: its folder exists and files can be created in it, the name is not a folder, an
  existing file is writable;
- no output is an input, and no two outputs are one file. Files are compared by identity, not spelling: an
  existing file by (device, inode), so `./x`, `x`, a symlink to `x` and a hard link to `x` are one file; a file
  not created yet by its folder's identity and its name;
- nothing is written where a later listing of the same inputs would read it back: an image-named output (and
  explain's overlays folder) may not lie in an input folder, or below one with `--recursive`.

Inputs read from stdin (`-`) and network inputs cannot be known ahead; they are not checked.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.errors import UsageError
from .writers import RECORD_EXTENSIONS, Format, choose_format

_GLOB_CHARS = frozenset("*?[")


def _identity(path: str) -> tuple:
    """A file's identity: (device, inode) when it exists (symlinks followed), else its folder's identity and its
    name. Raises nothing; a folder that does not exist gives the resolved spelling."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        pass
    folder, name = os.path.split(os.path.abspath(path))
    try:
        st = os.stat(folder)
        return (st.st_dev, st.st_ino, name)
    except OSError:
        return (os.path.realpath(folder), name)


def _folder_chain(path: str) -> list[tuple[int, int]]:
    """The identities of the folders `path` lies in: its own folder first, then each one above it."""
    chain = []
    folder = os.path.dirname(os.path.realpath(path))
    while True:
        try:
            st = os.stat(folder)
            chain.append((st.st_dev, st.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(folder)
        if parent == folder:
            return chain
        folder = parent


def check_location(option: str, path: str) -> None:
    """`path` can be created, or replaced: its folder exists and is writable, it is not a folder, an existing
    file is writable. Raises UsageError naming `option` and the path."""
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise UsageError(f"{option} {path}: folder {folder} {what}")
    from ..core.files import name_max

    if len(os.path.basename(path).encode("utf-8", "surrogateescape")) > name_max(folder):
        raise UsageError(f"{option} {path}: the name is longer than the file system allows "
                         f"({name_max(folder)} bytes)")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: not writable")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot create files in {folder}")


@dataclass
class Inputs:
    """What a run reads, as far as it can be known before reading: files and folders by identity."""

    files: dict[tuple, str]  # identity -> the name the user gave
    folders: dict[tuple[int, int], str]  # identity -> the name the user gave
    recursive: bool = False

    @classmethod
    def of(cls, args: Iterable[str] = (), *, files: Iterable[str] = (), recursive: bool = False) -> "Inputs":
        """`args`: command-line inputs (files, folders, quoted globs; `-` and URLs are skipped); `files`: other
        files the run reads (a data set's images, --weights, --labels), skipped unless they exist."""
        inputs = cls({}, {}, recursive)
        for arg in args:
            if arg == "-" or "://" in arg:
                continue
            if _GLOB_CHARS & set(arg) and not os.path.lexists(arg):
                for match in glob.glob(arg, recursive=recursive):
                    inputs._add(match)
            else:
                inputs._add(arg)
        for path in files:
            if path and "://" not in path and os.path.isfile(path):
                inputs._add(path)
        return inputs

    def _add(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if os.path.isdir(path):
            self.folders.setdefault(key, path)
        else:
            self.files.setdefault(key, path)

    def folder_holding(self, path: str) -> str | None:
        """The input folder a listing would find `path` in (its own folder, or one above with --recursive)."""
        chain = _folder_chain(path)
        for key in chain if self.recursive else chain[:1]:
            if key in self.folders:
                return self.folders[key]
        return None


def check(inputs: Inputs, files: Iterable[tuple[str, str]] = (), *, folder: tuple[str, str] | None = None,
          folder_extensions: tuple[str, ...] = ()) -> None:
    """Refuse (UsageError) an output that is an input, two outputs that are one file, and an output a listing of
    the inputs would read back. `files`: (option, path) of each output file, locations checked too; `folder`:
    (option, path) of an output folder whose files the tool names (explain's overlays), which will hold files
    ending in `folder_extensions`. Call before anything is read."""
    from ..inputs.sources import is_image_name

    files = list(files)
    for option, path in files:
        check_location(option, path)
    seen: dict[tuple, tuple[str, str]] = {}
    outputs = list(files) + ([folder] if folder else [])
    for option, path in outputs:
        key = _identity(path)
        if key in inputs.files:
            raise UsageError(f"{option} {path} is an input of this run ({inputs.files[key]}); it would be "
                             "overwritten: give another name")
        if key in inputs.folders:
            raise UsageError(f"{option} {path} is an input folder of this run ({inputs.folders[key]}): give "
                             "another folder")
        if key in seen:
            other_option, other = seen[key]
            raise UsageError(f"{option} {path} and {other_option} {other} are the same file: give each output "
                             "its own name")
        seen[key] = (option, path)
        is_folder = (option, path) == folder
        # A folder output is read back only by a recursive listing of a folder above it (one that is an input
        # folder itself was refused above); a file output when a listing would take it for an image.
        read_back = inputs.recursive if is_folder else is_image_name(path)
        holder = inputs.folder_holding(path) if read_back else None
        if holder is not None:
            what = "the overlays" if is_folder else "it"
            raise UsageError(f"{option} {path} lies in the input folder {holder}"
                             f"{' (--recursive)' if inputs.recursive else ''}: {what} would be read as input; "
                             "write elsewhere")
    if folder:
        option, path = folder
        if os.path.isdir(path):
            here = (os.stat(path).st_dev, os.stat(path).st_ino)
            for key, name in inputs.files.items():
                if name.lower().endswith(folder_extensions) and _folder_chain(name)[:1] == [here]:
                    raise UsageError(f"{option} {path} holds the input {name}, which an overlay could replace: "
                                     "give another folder")
            for out_option, out in files:
                if out.lower().endswith(folder_extensions) and _folder_chain(out)[:1] == [here]:
                    raise UsageError(f"{out_option} {out} lies in {option} {path}, where the tool names files "
                                     "itself: give another name")


def check_output(fmt: Format | None, output: str | None, resume: bool) -> Format:
    """The output's format, with the rules that involve --output: checked before any work starts."""
    if resume and not output:
        raise UsageError("--resume needs --output FILE (the file to resume)")
    if output:
        check_location("--output", output)
    return choose_format(fmt, output=output, pipe=Format.jsonl, by_extension=RECORD_EXTENSIONS)


def check_report(report: str | None, resume: bool = False) -> None:
    """--report: an .html file that can be created, and not with --resume (a page covers one whole run)."""
    if not report:
        return
    if resume:
        raise UsageError("--report covers one whole run; it cannot be combined with --resume")
    if not report.lower().endswith((".html", ".htm")):
        raise UsageError(f"--report {report}: give an .html file")
    check_location("--report", report)


def check_outputs(inputs: list[str], files: list[tuple[str, str | None]], *, recursive: bool = False,
                  reads: tuple[str | None, ...] = (), folder: tuple[str, str] | None = None,
                  folder_extensions: tuple[str, ...] = ()) -> None:
    """No output (`files`: (option, path or None)) may be an input (`inputs`, the command line's; `reads`: other
    files the run reads, such as --weights and --labels) or another output: outputs.check."""
    check(Inputs.of(inputs, files=[r for r in reads if r], recursive=recursive),
          [(option, path) for option, path in files if path], folder=folder, folder_extensions=folder_extensions)
