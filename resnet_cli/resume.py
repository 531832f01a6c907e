"""`--resume`: read what an earlier run left in `--output`, decide whether this run may continue it, and put
the kept records back in their places.

A file `--resume` refuses is left exactly as it was: every check here runs before the writer opens the file.
Only one thing is ever repaired: a torn last JSON line (a hard kill mid-write) that follows at least one valid
record of this tool; that input is classified again. Failures are classified again too. The resumed output is
written in input order, kept records in their places, so a resumed run that completes gives the very file an
uninterrupted run gives; it is written beside the old file and renamed over it, so a resumed run killed
half-way loses nothing either. Kept records of inputs this run does not list come last.
"""

from __future__ import annotations

import csv
import io
import json
import queue
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator

from .errors import UsageError
from .job import topk_for
from .records import Failure, Prediction, Record, Success, from_dict
from .writers import Format, csv_value


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
    rows = [{k: csv_value(v) if isinstance(v, str) else v for k, v in r.items()}
            for r in csv.DictReader(io.StringIO(text, newline=""))]
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


def check_resumable(previous: Iterable[Success], weights, topk: int | None) -> None:
    """Results of another model, preprocessing or top-k must not be mixed into one file. `weights` is the
    run's `weights.Resolved`; `topk` None is the default, 5 or every class of a smaller model."""
    arch, name, pre = weights.arch.name, weights.name, weights.preprocess
    for r in previous:
        if (r.arch, r.weights) != (arch, name):
            raise UsageError(
                f"--resume: the file holds results of {r.arch} with {r.weights}; this run uses {arch} with "
                f"{name}. Resume with the same --arch and --weights, or write to another file."
            )
        expected = topk_for(topk, weights.num_classes or len(r.topk))
        if (r.resize, r.crop) != (pre.resize, pre.crop) or len(r.topk) != expected:
            raise UsageError(
                f"--resume: the file holds results at resize {r.resize}, crop {r.crop}, top-{len(r.topk)}; this "
                f"run uses resize {pre.resize}, crop {pre.crop}, top-{expected}. Resume with the same options."
            )


def previous_successes(path: str, fmt: Format, weights, topk: int | None) -> list[Success]:
    """The successes to keep from `path`, checked to belong to this run; failures are retried."""
    kept = [r for r in read_records(path, fmt) if r.ok]
    check_resumable(kept, weights, topk)
    return kept


def in_input_order(records: Iterable[Record], listing, kept: list[Record]) -> Iterator[Record]:
    """The run's new `records` with the `kept` ones back in their places, by the listing's `order` (see
    sources.Listing). Kept records whose place this run never reached (it was stopped, or does not list them)
    follow at the end: a finished result is never dropped."""
    waiting: dict[str, deque[Record]] = defaultdict(deque)
    for r in kept:
        waiting[r.path].append(r)

    def pop(path: str) -> Iterator[Record]:
        if waiting.get(path):
            yield waiting[path].popleft()

    try:
        for rec in records:
            while (path := listing.order.get()) is not None:
                yield from pop(path)
            yield rec
    finally:
        if hasattr(records, "close"):
            records.close()  # the engine's threads and cluster go now, not when garbage is collected
    while True:  # kept inputs listed after the last new one
        try:
            path = listing.order.get_nowait()
        except queue.Empty:
            break
        if path is None:
            break  # a new input this run did not reach (stopped): the rest of its places stay open
        yield from pop(path)
    for r in kept:  # whatever is left, in the old file's order
        if waiting.get(r.path) and waiting[r.path][0] is r:
            yield waiting[r.path].popleft()
