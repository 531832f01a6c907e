"""Output formats and atomic files.

- jsonl: one record a line, written and flushed as each record is ready. To a file it is written in place,
  so a crash loses nothing finished; `--resume` repairs a torn last line.
- json: one array, streamed (`[]` when empty). To a file: written to a temporary file in the same folder and
  renamed over the target when complete, so readers never see half an array.
- csv: one row per (path, rank), failures one row with the error columns filled; atomic like json. A cell a
  spreadsheet would run as a formula gets a leading `'` (csv_cell), which --resume takes off (csv_value).
- table: a rich table per image on the terminal; failures as a red line.

File names that are not valid UTF-8 (Linux allows any bytes) reach us as surrogate escapes: JSON writes
them as `\\udcXX` escapes (json.loads gives back the same str, and os.fsencode the original bytes); CSV
writes the original bytes; the table shows `\\xNN`. Control characters in names (a newline) are escaped
by JSON and quoted by CSV, so a record's path always identifies its file.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import os
from typing import BinaryIO

from ..core.console import LONE_SURROGATE, data_console, printable
from ..core.files import AtomicFile, can_replace_atomically
from ..core.records import Failure, Record


class Format(str, enum.Enum):
    """Every output format the tool writes. Each command's --format offers the ones it writes, as an enum of
    their own made by `choices` (Typer shows and checks an enum's members), read back as a Format."""

    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


def choices(name: str, *formats: Format) -> type[enum.Enum]:
    """A --format option's enum offering these formats only (same names and values as Format's)."""
    return enum.Enum(name, {f.value: f.value for f in formats}, type=str)


SummaryFormat = choices("SummaryFormat", Format.table, Format.json)  # arch, evaluate, train: one document
ListFormat = choices("ListFormat", Format.table, Format.json, Format.jsonl)  # models, similar: a list


def choose_format(given, *, output: str | None = None, pipe: Format, by_extension: dict | None = None,
                  file: Format | None = None, stdout=None) -> Format:
    """The format of a run's output, by one rule for every command: --format when given; else, writing to a
    file, the one its extension names (`by_extension`, {".json": Format.json, ...}), else `file`; else a table
    on a terminal and `pipe` into a pipe or a file (stdout, sys.stdout by default)."""
    import sys

    from ..core.console import isatty

    if given is not None:
        return Format(given.value if isinstance(given, enum.Enum) else given)
    if output:
        ext = os.path.splitext(output)[1].lower()
        return (by_extension or {}).get(ext, file or pipe)
    return Format.table if isatty(stdout if stdout is not None else sys.stdout) else pipe


CSV_COLUMNS = ["path", "arch", "weights", "resize", "crop", "rank", "index", "label", "probability",
               "error_type", "error_message"]
# explain's CSV: the same rows, each with its image's explanation (docs/output.md)
EXPLAIN_COLUMNS = ["method", "layer", "target_index", "target_label", "target_probability", "overlay", "map"]

# Cells a spreadsheet would read as a formula (OWASP, "CSV Injection"), and the escape itself: such a cell is
# written with one `'` before it, which spreadsheets show as text and csv_value() takes off again.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(value) -> str:
    """A CSV cell for `value` (str() of it) that no spreadsheet runs: one `'` put before a cell that starts with
    = + - @ tab CR or `'`. csv_value() gives back the value's text exactly."""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_value(cell: str) -> str:
    """The text csv_cell() was given: one leading `'` taken off, when the cell has one."""
    return cell[1:] if cell.startswith("'") else cell


def dumps(obj) -> str:
    """Compact JSON, UTF-8 friendly (no \\u escapes for ordinary non-ASCII), lone surrogates escaped. Strict
    JSON: a NaN or an infinity raises ValueError rather than being written as JSON has no such number."""
    text = json.dumps(obj, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class Writer:
    """Base: records in, bytes out. `close(ok)` finishes the file (rename for atomic outputs)."""

    def __init__(self, out: BinaryIO, atomic: AtomicFile | None = None, owned: bool = False) -> None:
        self.out = out
        self.atomic = atomic
        self.owned = owned  # a plain file this writer opened and must close
        self.count = 0

    def write(self, record: Record) -> None:
        self._write(record)
        self.count += 1

    def _write(self, record: Record) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        if ok:
            self._finish()
        self.out.flush()
        if self.atomic is not None:
            self.atomic.commit() if ok else self.atomic.abort()
        elif self.owned:
            self.out.close()


class JsonlWriter(Writer):
    def _write(self, record: Record) -> None:
        self.out.write((dumps(record.to_dict()) + "\n").encode("utf-8"))
        self.out.flush()  # a complete line at a time, so a reader (or --resume) never sees half a record


class JsonWriter(Writer):
    def _write(self, record: Record) -> None:
        sep = "[\n" if self.count == 0 else ",\n"
        self.out.write((sep + dumps(record.to_dict())).encode("utf-8"))
        self.out.flush()

    def _finish(self) -> None:
        self.out.write(b"[]\n" if self.count == 0 else b"\n]\n")


class CsvWriter(Writer):
    def __init__(self, out: BinaryIO, atomic: AtomicFile | None = None, owned: bool = False, *,
                 explain: bool = False) -> None:
        super().__init__(out, atomic, owned)
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf, lineterminator="\n")
        self._explain = explain
        self._row(CSV_COLUMNS + (EXPLAIN_COLUMNS if explain else []))

    def _row(self, row) -> None:
        self._csv.writerow([csv_cell(cell) for cell in row])
        self.out.write(self._buf.getvalue().encode("utf-8", "surrogateescape"))
        self._buf.seek(0)
        self._buf.truncate()

    def _write(self, record: Record) -> None:
        if isinstance(record, Failure):
            self._row([record.path, "", "", "", "", "", "", "", "", record.type, record.message]
                      + [""] * len(EXPLAIN_COLUMNS) * self._explain)
        else:
            extra = []
            if self._explain:
                e = record.explanation
                extra = [e.method, e.layer, e.index, e.label, repr(e.probability), e.overlay or "", e.map or ""]
            for p in record.topk:
                self._row([record.path, record.arch, record.weights, record.resize, record.crop, p.rank,
                           p.index, p.label, repr(p.probability), "", ""] + extra)
        self.out.flush()


class TableWriter(Writer):
    """For people: one small table per image, streamed as results arrive."""

    def __init__(self, out: BinaryIO, atomic: AtomicFile | None = None, owned: bool = False, *,
                 color: bool | None = None) -> None:
        super().__init__(out, atomic, owned)
        self._text = io.TextIOWrapper(out, encoding="utf-8", errors="replace", write_through=True)
        self.console = data_console(file=self._text, force_terminal=color, highlight=False, soft_wrap=False)

    def _write(self, record: Record) -> None:
        from rich.markup import escape
        from rich.table import Table

        name = escape(printable(record.path))
        if isinstance(record, Failure):
            self.console.print(f"[bold]{name}[/]  [red]✗ {record.type}:[/] {escape(printable(record.message))}",
                               soft_wrap=True)
            return
        table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
        table.add_column(justify="right", style="dim")
        table.add_column(min_width=24)
        table.add_column(justify="right")
        table.add_column()
        for p in record.topk:
            bar = "█" * max(1, round(p.probability * 20)) if p.probability >= 0.025 else ""
            style = "bold" if p.rank == 1 else ""
            label = escape(printable(p.label))  # a model's or --labels' text: no escape sequence reaches a terminal
            table.add_row(str(p.rank), f"[{style}]{label}[/]" if style else label,
                          f"{p.probability:7.2%}", f"[cyan]{bar}[/]")
        self.console.print(f"[bold]{name}[/]  [dim]{escape(printable(record.weights))}, "
                           f"resize {record.resize}, crop {record.crop}[/]", soft_wrap=True)
        self.console.print(table)
        e = record.explanation
        if e is not None:
            where = f" → {escape(printable(e.overlay))}" if e.overlay else ""
            self.console.print(f"  [dim]{e.method} at {e.layer} of[/] {escape(printable(e.label))} "
                               f"({e.probability:.2%}){where}", soft_wrap=True)

    def close(self, ok: bool = True) -> None:
        self._text.flush()
        self._text.detach()  # leave the binary stream (stdout) open for whoever owns it
        super().close(ok)


WRITERS = {Format.jsonl: JsonlWriter, Format.json: JsonWriter, Format.csv: CsvWriter, Format.table: TableWriter}


RECORD_EXTENSIONS = {".json": Format.json, ".csv": Format.csv, ".txt": Format.table}  # else JSON Lines


def open_writer(fmt: Format, output: str | None, *, stdout: BinaryIO, color: bool | None = None,
                replace: bool = False, explain: bool = False) -> Writer:
    """The writer for a run: stdout, or `output`. JSON Lines go into the file as they come (a crash loses
    nothing finished); json and csv, and JSON Lines with `replace` (a resumed run rewriting its file), into a
    temporary file renamed over `output` when complete."""
    cls = WRITERS[fmt]
    kwargs = {"color": color} if fmt is Format.table else {"explain": explain} if fmt is Format.csv else {}
    if output is None:
        return cls(stdout, **kwargs)
    if not can_replace_atomically(output):
        return cls(open(output, "wb"), owned=True, **kwargs)
    if fmt is Format.jsonl and not replace:
        return cls(open(output, "wb"), owned=True, **kwargs)
    atomic = AtomicFile(output)
    return cls(atomic.file, atomic, **kwargs)
