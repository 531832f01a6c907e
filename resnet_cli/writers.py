"""Output formats and atomic files.

- jsonl: one record a line, written and flushed as each record is ready. To a file it is written in place,
  so a crash loses nothing finished; `--resume` repairs a torn last line.
- json: one array, streamed (`[]` when empty). To a file: written to a temporary file in the same folder and
  renamed over the target when complete, so readers never see half an array.
- csv: one row per (path, rank), failures one row with the error columns filled; atomic like json.
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
import stat
import tempfile
from typing import BinaryIO

from .console import LONE_SURROGATE, data_console, printable
from .records import Failure, Record


class Format(str, enum.Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


CSV_COLUMNS = ["path", "arch", "weights", "resize", "crop", "rank", "index", "label", "probability",
               "error_type", "error_message"]
# explain's CSV: the same rows, each with its image's explanation (docs/output.md)
EXPLAIN_COLUMNS = ["method", "layer", "target_index", "target_label", "target_probability", "overlay", "map"]

def dumps(obj) -> str:
    """Compact JSON, UTF-8 friendly (no \\u escapes for ordinary non-ASCII), lone surrogates escaped. Strict
    JSON: a NaN or an infinity raises ValueError rather than being written as JSON has no such number."""
    text = json.dumps(obj, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def can_replace_atomically(path: str) -> bool:
    """Rename-over is right for a regular file (or a new one); /dev/stdout, a FIFO or a device must be written
    into, never replaced."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


class AtomicFile:
    """A binary file that appears at `path` only when committed (temporary file + fsync + rename). A symlink
    at `path` keeps pointing where it did: the file it points to is the one replaced."""

    def __init__(self, path: str) -> None:
        path = os.path.realpath(path)
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if os.path.exists(self.path):
            os.chmod(self.tmp, os.stat(self.path).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


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
        self._csv.writerow(row)
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
            self.console.print(f"[bold]{name}[/]  [red]✗ {record.type}:[/] {escape(record.message)}", soft_wrap=True)
            return
        table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
        table.add_column(justify="right", style="dim")
        table.add_column(min_width=24)
        table.add_column(justify="right")
        table.add_column()
        for p in record.topk:
            bar = "█" * max(1, round(p.probability * 20)) if p.probability >= 0.025 else ""
            style = "bold" if p.rank == 1 else ""
            table.add_row(str(p.rank), f"[{style}]{escape(p.label)}[/]" if style else escape(p.label),
                          f"{p.probability:7.2%}", f"[cyan]{bar}[/]")
        self.console.print(f"[bold]{name}[/]  [dim]{escape(record.weights)}, "
                           f"resize {record.resize}, crop {record.crop}[/]", soft_wrap=True)
        self.console.print(table)
        e = record.explanation
        if e is not None:
            where = f" → {escape(printable(e.overlay))}" if e.overlay else ""
            self.console.print(f"  [dim]{e.method} at {e.layer} of[/] {escape(e.label)} "
                               f"({e.probability:.2%}){where}", soft_wrap=True)

    def close(self, ok: bool = True) -> None:
        self._text.flush()
        self._text.detach()  # leave the binary stream (stdout) open for whoever owns it
        super().close(ok)


WRITERS = {Format.jsonl: JsonlWriter, Format.json: JsonWriter, Format.csv: CsvWriter, Format.table: TableWriter}


def format_for_output(path: str | None, stdout_is_tty: bool) -> Format:
    """The default format: by the output file's extension, else a table on a terminal, else JSON Lines."""
    if path:
        ext = os.path.splitext(path)[1].lower()
        return {".json": Format.json, ".csv": Format.csv, ".txt": Format.table}.get(ext, Format.jsonl)
    return Format.table if stdout_is_tty else Format.jsonl


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
