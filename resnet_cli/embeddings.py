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

from .errors import UsageError
from .records import Embedding, Record
from .writers import AtomicFile, dumps

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
    """(paths, float32 N x D matrix, {"arch", "weights"}) of the successes in an embedding file of any of the
    three formats."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            matrix = np.load(path, allow_pickle=False)
            with open(sidecar(path), encoding="utf-8") as f:
                paths = [json.loads(line)["path"] for line in f if line.strip()]
            return paths, matrix.astype(np.float32, copy=False), {}
        if ext == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            table = table.filter(table.column("error_type").is_null())
            dim = int(meta.get("dim", 0)) or None
            flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            matrix = flat.reshape(table.num_rows, dim or -1).astype(np.float32, copy=False)
            return table.column("path").to_pylist(), matrix, meta
        if ext == ".jsonl":
            paths, rows, meta = [], [], {}
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if "embedding" in obj:
                        paths.append(obj["path"])
                        rows.append(obj["embedding"])
                        meta = {"arch": obj["arch"], "weights": obj["weights"]}
            return paths, np.array(rows, np.float32).reshape(len(rows), -1), meta
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: not an embedding file this tool wrote ({exc})") from None
    raise UsageError(f"{path}: an embedding file is .jsonl, .parquet or .npy")
