"""Labelled images, for `evaluate`: where they are, and which of the model's classes each label names.

DATA is
- a folder with one subfolder per class (torchvision's ImageFolder layout, `DATA/<class>/*.jpg`): class folders
  sorted by name, each listed like an input folder (image files, sorted, subfolders included); files directly
  in DATA belong to no class and are left out (with a note on stderr);
- or a manifest: `.csv` with `path` and `label` columns, or `.jsonl` with `{"path", "label"}` objects, one image
  a row, paths relative to the manifest's folder (absolute paths and URLs as they are).

A label names a class of the model by, in this order of precedence,
- its ImageNet WordNet id (`n02124075`, the layout of the ImageNet validation set as people reorganise it),
  for a model with ImageNet-1K's classes,
- its name exactly as the model spells it (a model trained on folders `1`, `2`, `3` has a class named `1`,
  whatever its index),
- its name, case-insensitively, with spaces, underscores and hyphens alike (`egyptian_cat`, `Egyptian cat`),
- or its index, ASCII digits (`285`). A number that is no class's name is taken as an index only when no
  class name of the model is itself a number: otherwise it is a usage error that names both readings.
A label that names no class, or names several (a custom labels file may repeat a name; torchvision's ImageNet
names are unique), is a usage error before any image is read, naming each such label with the closest class
names.

Text files are read as UTF-8 with a leading byte-order mark ignored (Windows Notepad writes one). In a class
folder DATA, hidden entries and the leftovers of other systems (`__MACOSX`, AppleDouble `._*` files,
`.DS_Store`, `Thumbs.db`, `desktop.ini`) are skipped; a class folder with no image in it is listed in
`Dataset.empty`.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.errors import UsageError
from ..inputs.net import is_url
from ..inputs.sources import Source, expand, is_leftover

_WNID = re.compile(r"n\d{8}")
_INDEX = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also accepts '²', which int() refuses


@dataclass(frozen=True)
class Dataset:
    sources: list[Source]  # in order; a source may carry its listing error
    labels: list[str]  # the label of each source, as written in DATA
    left_out: int = 0  # files directly in a class-folder DATA, in no class
    empty: tuple[str, ...] = ()  # class folders of a class-folder DATA that hold no image file


def read(data: str, *, recursive: bool = True) -> Dataset:
    """The labelled images DATA names (module docstring); a usage error when it is neither layout."""
    if os.path.isdir(data):
        return _read_folder(data, recursive)
    if not os.path.exists(data):
        raise UsageError(f"{data}: no such folder or manifest")
    ext = os.path.splitext(data)[1].lower()
    if ext == ".csv":
        rows = _read_csv(data)
    elif ext in (".jsonl", ".ndjson"):
        rows = _read_jsonl(data)
    else:
        raise UsageError(f"{data}: give a folder of class folders, or a .csv or .jsonl manifest with path and "
                         "label columns")
    base = os.path.dirname(data)
    sources, labels = [], []
    for path, label in rows:
        if not (os.path.isabs(path) or is_url(path) or "://" in path):
            path = os.path.join(base, path)
        sources.append(Source(path))
        labels.append(label)
    if not sources:
        raise UsageError(f"{data}: the manifest lists no images")
    return Dataset(sources, labels)


def _read_folder(data: str, recursive: bool) -> Dataset:
    sources, labels, left_out, empty = [], [], 0, []
    with os.scandir(data) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith(".") or is_leftover(entry.name):
            continue
        if entry.is_dir():
            before = len(sources)
            for src in expand([os.path.join(data, entry.name)], recursive=recursive):
                sources.append(src)
                labels.append(entry.name)
            if len(sources) == before:
                empty.append(entry.name)
        else:
            left_out += 1
    if not sources:
        raise UsageError(f"{data}: no images in class folders (expected DATA/<class>/<image>)")
    return Dataset(sources, labels, left_out, tuple(empty))


def _read_csv(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"path", "label"} - set(reader.fieldnames or ())
            if missing:
                raise UsageError(f"{path}: the manifest needs path and label columns (missing: "
                                 f"{', '.join(sorted(missing))})")
            return [(row["path"], row["label"]) for row in reader if row["path"]]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc})") from None


def _read_jsonl(path: str) -> list[tuple[str, str]]:
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    rows.append((str(obj["path"]), str(obj["label"])))
                except (ValueError, KeyError, TypeError):
                    raise UsageError(f"{path}: line {number} is not a {{\"path\", \"label\"}} object") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc})") from None
    return rows


def _normal(name: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", name.strip())).casefold()


def match(names: Iterable[str], classes: tuple[str, ...], model: str = "the model") -> dict[str, int]:
    """{label: class index} for every distinct label; one usage error listing every label that names no
    class or several. When the classes are ImageNet-1K's, a label may also be a class's WordNet id."""
    from ..models import registry

    wnids = registry.wnids() if tuple(classes) == registry.categories() else None
    by_name: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        by_name.setdefault(_normal(c), []).append(i)
    by_wnid = {w: i for i, w in enumerate(wnids)} if wnids else {}
    found: dict[str, int] = {}
    problems: list[str] = []
    by_exact: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        by_exact.setdefault(c.strip(), []).append(i)
    numeric = [c for c in classes if _INDEX.fullmatch(c.strip())]  # class names that read as indices
    for name in dict.fromkeys(names):
        text = name.strip()
        hits = by_exact.get(text) or by_name.get(_normal(text), [])
        if _WNID.fullmatch(text) and text in by_wnid:
            found[name] = by_wnid[text]
        elif len(hits) == 1:
            found[name] = hits[0]  # a class's own name wins over the index the same digits would be
        elif not hits and _INDEX.fullmatch(text) and int(text) < len(classes):
            if numeric:
                problems.append(f"{name!r} is no class's name, but {model}'s class names are numbers "
                                f"({', '.join(map(repr, numeric[:3]))}{', ...' if len(numeric) > 3 else ''}): "
                                f"as an index it would be class {int(text)}, named {classes[int(text)]!r}; "
                                "use that name")
            else:
                found[name] = int(text)
        elif hits:
            problems.append(f"{name!r} names {len(hits)} classes ({', '.join(map(str, hits))}): use the index"
                            + (" or the WordNet id" if wnids else ""))
        else:
            close = difflib.get_close_matches(_normal(text), list(by_name), n=3, cutoff=0.6)
            names_close = [classes[by_name[c][0]] for c in close]
            hint = f" (did you mean {' or '.join(repr(c) for c in names_close)}?)" if names_close else ""
            problems.append(f"{name!r} names no class of {model}{hint}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        forms = "a class index, a WordNet id (n02124075) or a class name" if wnids else "a class index or a class name"
        raise UsageError("labels that name no single class: " + "; ".join(problems[:5]) + more +
                         f". A label is {forms}")
    return found
