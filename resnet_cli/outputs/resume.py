"""`--resume`: read what an earlier run left in `--output`, decide whether this run may continue it, and put
the kept records back in their places.

The rule: a resumed run that completes writes the very file an uninterrupted run of the same command writes,
byte for byte, or the resume is refused (a usage error) and the file is left exactly as it was. How:

- Only a regular file is read (a FIFO or /dev/stdout would never end). A leading UTF-8 byte-order mark is
  ignored. Every record is checked against the schema, and every success against this run: architecture,
  weights name, resize and crop, the number of predictions (`--topk`), ranks 1..k, each index a class of this
  run's model with this run's label for it, probabilities finite, in [0, 1] and in decreasing order. In a
  CSV file each record's rows must be the very rows this tool writes for it.
- Records are matched to inputs by path and occurrence: the n-th success of a path in the file takes the
  place of the n-th time this run lists that path, so an input listed twice gets two records.
- The weights are checked by what they compute, not by their name: the first input that has a kept success
  is classified again, and its new record must equal the kept one byte for byte. A checkpoint replaced at the
  same path, another precision or device, or a changed image is refused there (the file is only replaced
  after that check has passed: a resumed run stopped before it leaves the file as it was). A file none of
  whose successes is an input of this run is refused (nothing in it can be checked).

Only one thing is ever repaired: a torn last JSON line (a hard kill mid-write) that follows at least one valid
record of this tool; that input is classified again. Failures are classified again too. The resumed output is
written beside the old file and renamed over it, so a resumed run killed half-way loses nothing either. Kept
records of inputs this run does not list come last.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import queue
import stat
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..core.console import printable
from ..core.errors import UsageError
from ..core.records import Record, Success, from_dict
from .writers import CSV_COLUMNS, CsvWriter, Format, csv_value, dumps

_LEFT = "the file is left as it is"
CHECK = object()  # Resume.claim's mark for the input classified again to check its kept record


class _Bad(ValueError):
    """A record that is not what this tool writes: `field` names the offending field ('' for the whole)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)


class _Other(Exception):
    """A valid record of a run with other options or another model."""


@dataclass(frozen=True)
class Expected:
    """What every success this run writes holds: checked against each record --resume would keep."""

    arch: str
    weights: str  # the records' `weights`: the published name or the checkpoint path as given
    resize: int
    crop: int
    topk: int  # predictions per record
    labels: tuple[str, ...]  # the model's class names, by index

    @classmethod
    def of(cls, job) -> "Expected":
        """This run's expectations; the model's class names are read the cheap way (weights.class_names:
        a checkpoint's head shape from its header). Raises UsageError as loading the model would."""
        from ..models.weights import class_names

        labels = class_names(job.weights)
        w = job.weights
        return cls(w.arch.name, w.name, w.preprocess.resize, w.preprocess.crop, job.task.bind(len(labels)).topk,
                   labels)


def _typed(d: dict, key: str, kind: type, what: str, within: str = ""):
    if key not in d:
        raise _Bad(within + key, "missing")
    value = d[key]
    if type(value) is not kind:  # exact: true is not 1, 1.0 is not 1
        raise _Bad(within + key, f"{what} expected, not {type(value).__name__}")
    return value


def _parse(d) -> Record:
    """A success or failure from its dict form, each field of the type this tool writes; anything the record
    types would not write back exactly (an extra field) is refused. Raises _Bad."""
    if not isinstance(d, dict):
        raise _Bad("", f"a JSON object expected, not {type(d).__name__}")
    _typed(d, "path", str, "a string")
    if "error" in d:
        error = _typed(d, "error", dict, "an object")
        for key in ("type", "message"):
            _typed(error, key, str, "a string", "error.")
    else:
        for key in ("arch", "weights"):
            _typed(d, key, str, "a string")
        pre = _typed(d, "preprocess", dict, "an object")
        for key in ("resize", "crop"):
            _typed(pre, key, int, "an integer", "preprocess.")
        for n, p in enumerate(_typed(d, "topk", list, "a list"), 1):
            if not isinstance(p, dict):
                raise _Bad(f"topk[{n}]", f"an object expected, not {type(p).__name__}")
            for key, kind, what in (("rank", int, "an integer"), ("index", int, "an integer"),
                                    ("label", str, "a string"), ("probability", float, "a decimal number")):
                _typed(p, key, kind, what, f"topk[{n}].")
    rec = from_dict(d)
    if rec.to_dict() != d:
        raise _Bad("", "it holds fields this tool does not write")
    return rec


def _check(rec: Success, want: Expected) -> None:
    """Does this kept success belong in this run's file? Raises _Other (another run's) or _Bad (not a valid
    record)."""
    if (rec.arch, rec.weights) != (want.arch, want.weights):
        raise _Other(f"it holds results of {rec.arch} with {rec.weights}; this run uses {want.arch} with "
                     f"{want.weights}: resume with the same --arch and --weights")
    if (rec.resize, rec.crop) != (want.resize, want.crop) or len(rec.topk) != want.topk:
        raise _Other(f"it holds results at resize {rec.resize}, crop {rec.crop}, top-{len(rec.topk)}; this run "
                     f"uses resize {want.resize}, crop {want.crop}, top-{want.topk}: resume with the same options")
    last, seen = 1.0, set()
    for n, p in enumerate(rec.topk, 1):
        field = f"topk[{n}]"
        if p.rank != n:
            raise _Bad(f"{field}.rank", f"{p.rank} where {n} belongs")
        if not 0 <= p.index < len(want.labels) or p.index in seen:
            raise _Bad(f"{field}.index", f"{p.index} is not a class of this model (0..{len(want.labels) - 1}) "
                       "or is repeated")
        seen.add(p.index)
        if p.label != want.labels[p.index]:
            raise _Other(f"it labels class {p.index} {p.label!r}; this run's model calls it "
                         f"{want.labels[p.index]!r}: resume with the same model and --labels")
        if not (math.isfinite(p.probability) and 0.0 <= p.probability <= last):
            raise _Bad(f"{field}.probability", f"{p.probability!r} is not a probability in [0, 1] below the "
                       "one ranked before it")
        last = p.probability


def _not_ours(path: str, fmt: Format, where: str, exc: Exception) -> UsageError:
    if isinstance(exc, _Other):
        return UsageError(f"--resume: {path}, {where}: {exc}, or write to another file; {_LEFT}")
    return UsageError(f"--resume: {where} of {path} is not a {fmt.value} record this tool wrote ({exc}); {_LEFT} "
                      "(is it the right file?)")


def _contents(path: str, fmt: Format) -> bytes | None:
    """The bytes of the file to resume (a leading byte-order mark dropped), None when there is none. Only a
    regular file is opened: reading a FIFO, or /dev/stdout when it is a pipe, would wait forever."""
    if fmt not in (Format.jsonl, Format.json, Format.csv):
        raise UsageError(f"--resume works with --format jsonl, json or csv, not {fmt.value}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"--resume: {path} is not a regular file (a pipe, FIFO or device); only a results "
                         "file written by an earlier run can be resumed")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    return data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data  # an editor's mark


def _parse_file(data: bytes, path: str, fmt: Format, want: Expected) -> list[Record]:
    """The records in `data`, each checked (see the module docstring). Raises UsageError."""
    if fmt is Format.jsonl:
        return _read_jsonl(data, path, want)
    if fmt is Format.json:
        return _read_json(data, path, want)
    return _read_csv(data, path, want)


def _checked(d, want: Expected) -> Record:
    rec = _parse(d)
    if isinstance(rec, Success):
        _check(rec, want)
    return rec


def _read_jsonl(data: bytes, path: str, want: Expected) -> list[Record]:
    out: list[Record] = []
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            # A torn last line (no newline after it) of a killed run is dropped and that input classified
            # again, but only after a record of this tool: a one-line file of something else is not ours.
            if number == len(lines) and out:
                continue
            raise UsageError(f"--resume: line {number} of {path} is not a record of this tool; {_LEFT} (is it "
                             "the right file?)") from None
        try:
            out.append(_checked(d, want))
        except (_Bad, _Other) as exc:
            raise _not_ours(path, Format.jsonl, f"line {number}", exc) from None
    return out


def _read_json(data: bytes, path: str, want: Expected) -> list[Record]:
    if not data.strip():
        return []
    try:
        items = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"--resume: {path} is not a json file this tool wrote ({exc}); {_LEFT}") from None
    if not isinstance(items, list):
        raise UsageError(f"--resume: {path} is not a json file this tool wrote (not an array); {_LEFT}")
    out: list[Record] = []
    for n, d in enumerate(items, 1):
        try:
            out.append(_checked(d, want))
        except (_Bad, _Other) as exc:
            raise _not_ours(path, Format.json, f"record {n}", exc) from None
    return out


def _csv_rows(rec: Record) -> list[list[str]]:
    """The rows the CSV writer writes for `rec`, as csv.reader reads them back."""
    buf = io.BytesIO()
    CsvWriter(buf).write(rec)
    rows = list(csv.reader(io.StringIO(buf.getvalue().decode("utf-8", "surrogateescape"), newline="")))
    return rows[1:]  # after the header


def _csv_record(rows: list[list[str]]) -> dict:
    """The dict form of one record from its rows (a failure's one row, or a success's rank rows), each cell's
    text as it was before the writer guarded it against spreadsheet formulas (writers.csv_value)."""
    rows = [[csv_value(c) for c in row] for row in rows]
    cell = dict(zip(CSV_COLUMNS, rows[0]))
    if cell["error_type"]:
        return {"path": cell["path"], "error": {"type": cell["error_type"], "message": cell["error_message"]}}
    number = {"resize": int, "crop": int, "rank": int, "index": int, "probability": float}

    def value(row: dict, key: str):
        try:
            return number[key](row[key]) if key in number else row[key]
        except ValueError:
            raise _Bad(key, f"{row[key]!r} is not a number") from None

    topk = [{k: value(r, k) for k in ("rank", "index", "label", "probability")}
            for r in (dict(zip(CSV_COLUMNS, row)) for row in rows)]
    return {"path": cell["path"], "arch": cell["arch"], "weights": cell["weights"],
            "preprocess": {"resize": value(cell, "resize"), "crop": value(cell, "crop")}, "topk": topk}


def _read_csv(data: bytes, path: str, want: Expected) -> list[Record]:
    """Rows grouped into records: a failure is one row; a success starts at a rank-1 row and takes the rows of
    the same path that follow it (so an input listed twice gives two records). Each record's rows must be the
    rows this tool writes for it."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")))
    except csv.Error as exc:
        raise UsageError(f"--resume: {path} is not a csv file this tool wrote ({exc}); {_LEFT}") from None
    if not rows:
        return []
    if rows[0] != CSV_COLUMNS:
        raise UsageError(f"--resume: {path} is not a csv file this tool wrote (its columns are not "
                         f"{', '.join(CSV_COLUMNS)}); {_LEFT}")
    groups: list[tuple[int, list[list[str]]]] = []  # (first row's number, rows)
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(CSV_COLUMNS):
            raise _not_ours(path, Format.csv, f"row {n}", _Bad("", f"{len(row)} cells, not {len(CSV_COLUMNS)}"))
        continues = (groups and not row[CSV_COLUMNS.index("error_type")] and row[CSV_COLUMNS.index("rank")] != "1"
                     and not groups[-1][1][0][CSV_COLUMNS.index("error_type")] and groups[-1][1][0][0] == row[0])
        if continues:
            groups[-1][1].append(row)
        else:
            groups.append((n, [row]))
    out: list[Record] = []
    for n, group in groups:
        try:
            rec = _checked(_csv_record(group), want)
            if _csv_rows(rec) != group:
                raise _Bad("", "its rows differ from the ones this tool writes for it")
        except (_Bad, _Other) as exc:
            raise _not_ours(path, Format.csv, f"row {n}", exc) from None
        out.append(rec)
    return out


class Resume:
    """What --resume keeps of an earlier file and where it goes. `claim` is the listing's `resume` (called
    for each input, in order); `in_input_order` puts the kept records back in their places."""

    def __init__(self, output: str, kept: list[Success]) -> None:
        self.output = output
        self.kept = kept
        self._left = Counter(r.path for r in kept)  # kept records not yet given a place, by path
        self._unchecked = True  # until an input with a kept record has been claimed to be classified again
        self.confirmed = False  # a kept record was computed again, the same to the byte

    def claim(self, path: str):
        """The listing's question for each input, in order: None (classify it), `path` (skip it: a kept record
        takes its place) or CHECK (classify it and compare with the kept record)."""
        if self._left[path] <= 0:
            return None
        self._left[path] -= 1
        if self._unchecked:
            self._unchecked = False
            return CHECK
        return path

    def _compare(self, new: Record, old: Success) -> None:
        if dumps(new.to_dict()) == dumps(old.to_dict()):
            self.confirmed = True
            return
        now = (f"{new.topk[0].label!r} at {new.topk[0].probability!r}" if isinstance(new, Success)
               else f"a failure ({new.type}: {new.message})")
        raise UsageError(
            f"--resume: {self.output} holds for {printable(old.path)} top-1 {old.topk[0].label!r} at "
            f"{old.topk[0].probability!r}; this run gives {now}. The weights file, --precision, --device or the "
            f"image differ from the earlier run's; {_LEFT}: resume with the earlier ones, or write to another file.")

    def _unmatched(self) -> UsageError:
        return UsageError(f"--resume: none of the {len(self.kept)} results in {self.output} is for an input of "
                          f"this run, so none can be checked against it; {_LEFT} (is it the right file?)")

    def in_input_order(self, records: Iterable[Record], listing) -> Iterator[Record]:
        """The run's new `records` with the kept ones back in their places, by the listing's `order` (see
        sources.Listing). Kept records whose place this run never reached (it was stopped, or does not list
        them) follow at the end: a finished result is never dropped."""
        waiting: dict[str, deque[Success]] = defaultdict(deque)
        for r in self.kept:
            waiting[r.path].append(r)

        def pop(path: str) -> Iterator[Record]:
            if waiting.get(path):
                yield waiting[path].popleft()

        stopped = False
        try:
            for rec in records:
                while isinstance(mark := listing.order.get(), str):
                    yield from pop(mark)
                if mark is CHECK:
                    self._compare(rec, waiting[rec.path].popleft())
                elif self._unchecked and listing.total is not None:
                    raise self._unmatched()  # listed whole, and no input has a kept record
                yield rec
        finally:
            if hasattr(records, "close"):
                records.close()  # the engine's threads and cluster go now, not when garbage is collected
        while True:  # kept inputs listed after the last new one
            try:
                mark = listing.order.get_nowait()
            except queue.Empty:
                break
            if not isinstance(mark, str):
                stopped = True  # a new input this run did not reach: the rest of its places stay open
                break
            yield from pop(mark)
        if not self.confirmed and not stopped and listing.total is not None:
            raise self._unmatched()
        for r in self.kept:  # whatever is left, in the old file's order
            if waiting.get(r.path) and waiting[r.path][0] is r:
                yield waiting[r.path].popleft()


def load(path: str, fmt: Format, job) -> Resume | None:
    """What `--resume` keeps of `path` for `job`: None when it keeps nothing (no file, or failures only: the
    run starts afresh). Raises UsageError, leaving the file as it was."""
    data = _contents(path, fmt)
    if data is None:
        return None
    kept = [r for r in _parse_file(data, path, fmt, Expected.of(job)) if r.ok]
    return Resume(path, kept) if kept else None
