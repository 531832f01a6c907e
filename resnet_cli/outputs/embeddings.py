"""Embedding files, written as the records stream in (flat memory in the number of inputs), by extension:

- `.jsonl`: one line per input, `{"path", "arch", "weights", "embedding": [...]}` or a failure record
  `{"path", "error": {"type", "message"}}`, in input order.
- `.parquet`: columns `path` (string), `embedding` (fixed-size list of float32, null for a failure),
  `error_type`, `error_message` (null for a success), with `arch`, `weights` and the dimension in the file's
  metadata; row groups as the records come (pyarrow: the `[cloud]` or `[ray]` extra).
- `.npy`: a float32 N x D array of the successes, in input order, and beside it `FILE.paths.jsonl`, one line
  per row: `{"row", "path"}` (failures are not rows; they are on stderr and in the exit code). The rows go to
  a temporary file first, since an .npy header states N.

Every file appears atomically: written beside its target and renamed over it when complete (or when the run
is interrupted, holding what was finished).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np

from ..core.errors import UsageError, first_line
from ..core.records import Embedding, Record
from ..core.files import AtomicFile
from .writers import dumps

FORMATS = (".jsonl", ".parquet", ".npy")
PARQUET_HINT = "pip install 'resnet-classify[cloud]'"


def check_output(path: str) -> str:
    """The output's format (its extension), checked before any work starts."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"-o {path}: give a .jsonl, .parquet or .npy file")
    if ext == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UsageError(f"-o {path}: .parquet needs pyarrow: {PARQUET_HINT}")
    return ext


def sidecar(path: str) -> str:
    return os.path.splitext(path)[0] + ".paths.jsonl"


class JsonlEmbeddings:
    def __init__(self, path: str) -> None:
        self.atomic = AtomicFile(path)

    def write(self, rec: Record) -> None:
        self.atomic.file.write((dumps(rec.to_dict()) + "\n").encode("utf-8"))

    def close(self, ok: bool) -> None:
        self.atomic.commit() if ok else self.atomic.abort()


class ParquetEmbeddings:
    """Buffers a row group's worth of rows (ROWS), then writes it: memory bounded, the file streamed."""

    ROWS = 1024

    def __init__(self, path: str, dim: int, arch: str, weights: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.dim = dim
        self.schema = pa.schema(
            [("path", pa.string()), ("embedding", pa.list_(pa.float32(), dim)), ("error_type", pa.string()),
             ("error_message", pa.string())],
            metadata={"arch": arch, "weights": weights, "dim": str(dim)})
        self.atomic = AtomicFile(path)
        self.writer = pq.ParquetWriter(self.atomic.file, self.schema)
        self.rows: list[tuple] = []

    def write(self, rec: Record) -> None:
        # Paths that are not UTF-8 (surrogate escapes) cannot be Arrow strings: their JSON escape form is kept.
        path = rec.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if rec.ok:
            self.rows.append((path, rec.vector, None, None))
        else:
            self.rows.append((path, None, rec.type, rec.message))
        if len(self.rows) >= self.ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        pa = self.pa
        paths, vectors, types, messages = zip(*self.rows)
        flat = np.concatenate([v if v is not None else np.zeros(self.dim, np.float32) for v in vectors])
        mask = np.array([v is None for v in vectors])
        values = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), self.dim, mask=pa.array(mask))
        table = pa.Table.from_arrays([pa.array(paths, pa.string()), values, pa.array(types, pa.string()),
                                      pa.array(messages, pa.string())], schema=self.schema)
        self.writer.write_table(table)
        self.rows = []

    def close(self, ok: bool) -> None:
        if ok:
            self._flush()
        self.writer.close()
        self.atomic.commit() if ok else self.atomic.abort()


class NpyEmbeddings:
    def __init__(self, path: str, dim: int) -> None:
        self.path = path
        self.dim = dim
        self.rows = AtomicFile(path + ".rows")  # raw float32 rows; becomes the .npy at the end
        self.paths = AtomicFile(sidecar(path))
        self.count = 0

    def write(self, rec: Record) -> None:
        if not isinstance(rec, Embedding):
            return
        self.rows.file.write(np.ascontiguousarray(rec.vector, np.float32).tobytes())
        self.paths.file.write((dumps({"row": self.count, "path": rec.path}) + "\n").encode("utf-8"))
        self.count += 1

    def close(self, ok: bool) -> None:
        if not ok:
            self.rows.abort()
            self.paths.abort()
            return
        self.rows.file.flush()
        out = AtomicFile(self.path)
        try:
            np.lib.format.write_array_header_1_0(
                out.file, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                           "shape": (self.count, self.dim)})
            with open(self.rows.tmp, "rb") as raw:
                shutil.copyfileobj(raw, out.file, 1 << 20)
            out.commit()
        except BaseException:
            out.abort()
            raise
        finally:
            self.rows.abort()
        self.paths.commit()


def open_output(path: str, *, dim: int, arch: str, weights: str):
    ext = check_output(path)
    if ext == ".jsonl":
        return JsonlEmbeddings(path)
    if ext == ".parquet":
        return ParquetEmbeddings(path, dim, arch, weights)
    return NpyEmbeddings(path, dim)


def read(path: str) -> tuple[list[str], np.ndarray, dict]:
    """(paths, float32 N x D matrix, {"arch", "weights"} where the file says) of the successes in an
    embedding file of any of the three formats.

    Raises UsageError naming the file (and the line, row or field) for a file that is missing or unreadable,
    a format whose reader is not installed (.parquet without pyarrow), a file this tool did not write, a
    `.npy` whose FILE.paths.jsonl is missing or names another number of rows, vectors of unequal length, or
    a number that is not finite (NaN, infinity)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"{path}: an embedding file is .jsonl, .parquet or .npy")
    if ext == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UsageError(f"{path}: reading .parquet needs pyarrow: {PARQUET_HINT}")
    _readable(path)
    try:
        paths, matrix, meta = {".npy": _read_npy, ".parquet": _read_parquet, ".jsonl": _read_jsonl}[ext](path)
    except UsageError:
        raise
    except OSError as exc:
        raise UsageError(f"{exc.filename or path}: {exc.strerror or first_line(exc)}") from None
    except Exception as exc:  # whatever a foreign or damaged file makes a reader raise
        raise UsageError(f"{path}: not an embedding file this tool wrote ({first_line(exc)})") from None
    if len(paths) != len(matrix):
        raise UsageError(f"{path}: {len(paths)} paths for {len(matrix)} vectors")
    for start in range(0, len(matrix), 4096):  # a block at a time: no N x D temporary
        bad = ~np.isfinite(matrix[start:start + 4096]).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            raise UsageError(f"{path}: the vector of {paths[row]!r} (row {row}) holds a number that is not finite")
    return paths, matrix, meta


def _readable(path: str) -> None:
    """A usage error naming `path` unless it is a regular file this process can open (a FIFO would block)."""
    import stat

    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{path}: a folder, not an embedding file")
        if not stat.S_ISREG(mode):
            raise UsageError(f"{path}: not a regular file")
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


def _read_npy(path: str) -> tuple[list[str], np.ndarray, dict]:
    matrix = np.load(path, allow_pickle=False, mmap_mode="r")
    if matrix.ndim != 2 or matrix.dtype.kind not in "fiu":
        raise UsageError(f"{path}: holds a {matrix.dtype} array of shape {matrix.shape}, not rows of vectors "
                         "(N x D numbers)")
    side = sidecar(path)
    _readable(side)
    paths = []
    for number, obj in _json_lines(side):
        if (not isinstance(obj, dict) or not isinstance(obj.get("path"), str)
                or obj.get("row") != len(paths) or isinstance(obj.get("row"), bool)):
            raise UsageError(f"{side}, line {number}: not {{\"row\": {len(paths)}, \"path\": ...}} "
                             f"(the row names of {path}, as embed writes them)")
        paths.append(obj["path"])
    if len(paths) != matrix.shape[0]:
        raise UsageError(f"{side} names {len(paths)} rows; {path} holds {matrix.shape[0]}")
    return paths, np.asarray(matrix, np.float32), {}


def _read_parquet(path: str) -> tuple[list[str], np.ndarray, dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    missing = [c for c in ("path", "embedding", "error_type") if c not in table.column_names]
    if missing:
        raise UsageError(f"{path}: no column {missing[0]!r}: not an embedding file this tool wrote")
    table = table.filter(table.column("error_type").is_null())
    kind = table.schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind):
        raise UsageError(f"{path}: column 'embedding' is {kind}, not vectors of one length")
    dim = kind.list_size
    if "dim" in meta and meta["dim"] != str(dim):
        raise UsageError(f"{path}: the metadata says dim {meta['dim']}; the vectors have {dim} numbers")
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if flat.size != table.num_rows * dim:
        raise UsageError(f"{path}: column 'embedding' has a null vector on a row without an error_type")
    paths = table.column("path").to_pylist()
    if not all(isinstance(p, str) for p in paths):
        raise UsageError(f"{path}: column 'path' has a null on row {next(i for i, p in enumerate(paths) if p is None)}")
    return paths, flat.reshape(table.num_rows, dim).astype(np.float32, copy=False), meta


def _read_jsonl(path: str) -> tuple[list[str], np.ndarray, dict]:
    paths, rows, meta = [], [], {}
    for number, obj in _json_lines(path):
        if isinstance(obj, dict) and "error" in obj and isinstance(obj.get("path"), str):
            continue  # a failure record
        vector = np.array(obj.get("embedding") if isinstance(obj, dict) else None)
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or vector.ndim != 1 \
                or vector.dtype.kind not in "fiu":
            raise UsageError(f"{path}, line {number}: not {{\"path\": ..., \"embedding\": [numbers]}}: not an "
                             "embedding file this tool wrote")
        if rows and len(vector) != len(rows[0]):
            raise UsageError(f"{path}, line {number}: an embedding of {len(vector)} numbers after ones of "
                             f"{len(rows[0])}")
        paths.append(obj["path"])
        rows.append(vector.astype(np.float32))
        meta = {k: obj[k] for k in ("arch", "weights") if isinstance(obj.get(k), str)}
    matrix = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    return paths, matrix, meta


def _json_lines(path: str):
    """(line number, the line's JSON value, None where it is not JSON) for each line of `path` that is not
    blank."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError:
                    yield number, None
