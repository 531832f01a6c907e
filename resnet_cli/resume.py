"""`--resume`: read what an earlier run left in `--output`, and decide whether this run may continue it.

A file `--resume` refuses is left exactly as it was: every check here runs before the writer opens the file.
Only one thing is ever repaired: a torn last JSON line (a hard kill mid-write) that follows at least one valid
record of this tool; that input is classified again.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable

from .errors import UsageError
from .records import Failure, Prediction, Record, Success, from_dict
from .writers import Format


def read_records(path: str, fmt: Format) -> list[Record]:
    """The records an earlier run left in `path` ([] when there is no such file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UsageError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    try:
        if fmt is Format.jsonl:
            return _read_jsonl(data, path)
        if fmt is Format.json:
            return [from_dict(d) for d in json.loads(data.decode("utf-8"))] if data.strip() else []
        if fmt is Format.csv:
            return _read_csv(data.decode("utf-8", "surrogateescape"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"--resume: {path} is not a {fmt.value} file this tool wrote ({exc}); the file is left "
                         "as it is") from None
    raise UsageError(f"--resume works with --format jsonl, json or csv, not {fmt.value}")


def _read_jsonl(data: bytes, path: str) -> list[Record]:
    out: list[Record] = []
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(from_dict(json.loads(line.decode("utf-8"))))
        except (ValueError, KeyError, TypeError, AttributeError):
            # A torn last line (no newline after it) of a killed run is dropped and that input classified
            # again, but only after a record of this tool: a one-line file of something else is not ours.
            if number == len(lines) and out:
                continue
            raise UsageError(f"--resume: line {number} of {path} is not a record of this tool; the file is left "
                             "as it is (is it the right file?)") from None
    return out


def _read_csv(text: str) -> list[Record]:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    out: list[Record] = []
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    for path, group in by_path.items():
        first = group[0]
        if first["error_type"]:
            out.append(Failure(path, first["error_type"], first["error_message"]))
            continue
        topk = tuple(Prediction(int(r["rank"]), int(r["index"]), r["label"], float(r["probability"])) for r in group)
        out.append(Success(path, first["arch"], first["weights"], int(first["resize"]), int(first["crop"]), topk))
    return out


def check_resumable(previous: Iterable[Success], weights, topk: int) -> None:
    """Results of another model, preprocessing or top-k must not be mixed into one file. `weights` is the
    run's `weights.Resolved`."""
    arch, name, pre = weights.arch.name, weights.name, weights.preprocess
    for r in previous:
        if (r.arch, r.weights) != (arch, name):
            raise UsageError(
                f"--resume: the file holds results of {r.arch} with {r.weights}; this run uses {arch} with "
                f"{name}. Resume with the same --arch and --weights, or write to another file."
            )
        if (r.resize, r.crop) != (pre.resize, pre.crop) or len(r.topk) != topk:
            raise UsageError(
                f"--resume: the file holds results at resize {r.resize}, crop {r.crop}, top-{len(r.topk)}; this "
                f"run uses resize {pre.resize}, crop {pre.crop}, top-{topk}. Resume with the same options."
            )


def previous_successes(path: str, fmt: Format, weights, topk: int) -> list[Success]:
    """The successes to keep from `path`, checked to belong to this run; failures are retried."""
    kept = [r for r in read_records(path, fmt) if r.ok]
    check_resumable(kept, weights, topk)
    return kept
