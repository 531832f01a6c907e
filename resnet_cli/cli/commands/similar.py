"""`resnet-classify similar`: nearest neighbours by cosine similarity in an embedding file (`embed`'s output),
and near-duplicate groups within it.

Exact search: a matrix product of unit vectors, in blocks of rows, so memory stays at the index plus one block
of similarities. It answers a million vectors in seconds per query batch; past that, or for many queries a
second, an approximate index (faiss, usearch) is the tool (docs/embed.md).

- A query that is a file in the index, however either is spelled (SameFile), uses its stored vector, and no
  row of that file is its neighbour. Any other query is an image (a file, folder, glob, URL or `-`), embedded
  as `embed` does with the index's architecture and weights (from the file; `.npy` files carry none: give
  --arch and --weights) and the weights' preprocessing; an embedded image that is in the index is not its own
  neighbour either.
- `--duplicates` groups the index's vectors whose similarity reaches the threshold (0.95 by default), linked
  transitively; a group's similarity is the lowest between any two of its members. Memory: the index and one
  tile of similarities, whatever the number of similar pairs (analysis.neighbours, the engine `audit` uses).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Annotated, Optional

import typer

from ...core.console import print_data
from ...core.errors import UsageError
from ...models.devices import Precision
from ...run.job import ModelOptions, RunOptions, make_job
from ..options import ArchOpt, BatchSizeOpt, LocalDeviceOpt, LocalWorkersOpt, OfflineOpt, PrecisionOpt, QuietOpt
from .stream import RecordStream

from ...outputs.writers import Format, ListFormat, choose_format


def command(
    index: Annotated[str, typer.Option(
        "--index", "-i", metavar="FILE", show_default=False,
        help="An embedding file written by `resnet-classify embed` (.jsonl, .parquet or .npy).")],
    queries: Annotated[Optional[list[str]], typer.Argument(
        metavar="QUERY...", show_default=False,
        help="Paths in the index, or images to embed (files, folders, globs, URLs, - for stdin).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, metavar="K", help="Neighbours per query.")] = 5,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", "-t", min=-1.0, max=1.0, metavar="T", show_default=False,
        help="Keep neighbours at least this similar; with --duplicates, the similarity that links two images "
        "(default 0.95).")] = None,
    duplicates: Annotated[bool, typer.Option(
        "--duplicates", help="List groups of near-duplicates within the index instead of answering queries.")]
    = False,
    format: Annotated[Optional[ListFormat], typer.Option(
        "--format", "-f", case_sensitive=False, show_default=False,
        help="Default: a table on a terminal, else jsonl.")] = None,
    arch: ArchOpt = None,
    weights: Annotated[Optional[str], typer.Option(
        "--weights", "-w", metavar="WEIGHTS", show_default=False,
        help="The weights the index was made with, for queries to embed (default: what the index names).")]
    = None,
    device: LocalDeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = None,
    workers: LocalWorkersOpt = None,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find the most similar images in an embedding file, or its near-duplicates."""
    from ...outputs import embeddings

    fmt = choose_format(format, pipe=Format.jsonl)
    if duplicates and queries:
        raise UsageError("--duplicates looks within the index: give no QUERY")
    if not duplicates and not queries:
        raise UsageError("give a QUERY (a path in the index, or an image), or --duplicates")
    paths, matrix, meta = embeddings.read(index)
    if not len(paths):
        raise UsageError(f"{index}: the index holds no vectors")
    unit = _unit(matrix)
    del matrix
    if duplicates:
        results = list(duplicate_groups(paths, unit, 0.95 if threshold is None else threshold))
        code = 0
    else:
        same = SameFile(paths)
        results, code = [], 0
        pending: list[str] = []

        def flush() -> None:
            nonlocal code
            if pending:
                options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                                     offline=offline, quiet=quiet)
                model = ModelOptions(arch, weights)
                vectors, failures, run_code = _embed(pending, meta, index, unit.shape[1], model, options)
                code = max(code, run_code)
                for path, vector in vectors:
                    results.append(neighbours(path, vector, paths, unit, k, threshold, exclude=same.rows(path)))
                results.extend(failures)
                pending.clear()

        for q in queries:
            rows = same.rows(q)
            if rows:
                flush()
                results.append(neighbours(q, unit[rows[0]], paths, unit, k, threshold, exclude=rows))
            else:
                pending.append(q)
        flush()
    _print(results, fmt)
    raise typer.Exit(code)


class SameFile:
    """Which rows of the index are the same file as a path, however either is spelled: the same string, the
    same normalised absolute path (`./a.jpg`, `a.jpg`, `x/../a.jpg`; relative paths are taken from the
    current folder), or, when both exist, the same file on disk (device and inode: a hard link, a symlink, a
    bind mount). URLs and cloud objects match by their exact string."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.by_name: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            self.by_name.setdefault(self._name(p), []).append(i)
        self._by_inode: dict[tuple[int, int], list[int]] | None = None  # stat()ed when first needed

    @staticmethod
    def _name(path: str) -> str:
        from ...inputs.readers import LOCAL, scheme

        if path == "-" or scheme(path) != LOCAL:
            return path
        return os.path.normpath(os.path.abspath(path))

    @staticmethod
    def _inode(path: str) -> tuple[int, int] | None:
        from ...inputs.readers import LOCAL, scheme

        if path == "-" or scheme(path) != LOCAL:
            return None
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None

    def rows(self, path: str) -> list[int]:
        """The index rows holding `path`'s file, in index order (empty: not in the index)."""
        found = set(self.by_name.get(self._name(path), ()))
        inode = self._inode(path)
        if inode is not None:
            if self._by_inode is None:
                self._by_inode = {}
                for i, p in enumerate(self.paths):
                    key = self._inode(p)
                    if key is not None:
                        self._by_inode.setdefault(key, []).append(i)
            found.update(self._by_inode.get(inode, ()))
        return sorted(found)


def _unit(matrix):
    """The rows of `matrix` scaled to unit length (zero rows stay zero), float32 (analysis.neighbours.unit)."""
    from ...analysis import neighbours

    return neighbours.unit(matrix)


def neighbours(query: str, vector, paths: list[str], unit, k: int, threshold: float | None,
               exclude: list[int] | None) -> dict:
    """The k paths most similar to `vector` (cosine), most similar first; ties in index order. The rows in
    `exclude` (the query's own file) are never neighbours."""
    import numpy as np

    v = vector / (np.linalg.norm(vector) or 1.0)
    sims = unit @ v.astype(np.float32)
    if exclude:
        sims[exclude] = -np.inf
    order = np.lexsort((np.arange(len(sims)), -sims))[:k]
    found = [{"path": paths[j], "similarity": float(sims[j])} for j in order if np.isfinite(sims[j])]
    if threshold is not None:
        found = [n for n in found if n["similarity"] >= threshold]
    return {"query": query, "neighbours": found}


def duplicate_groups(paths: list[str], unit, threshold: float):
    """{"group": [paths], "similarity": lowest pairwise} for each set of vectors linked by similarities at or
    above `threshold` (transitively): analysis.neighbours.duplicate_groups, in its tiles of ROWS x COLS
    similarities, SUB rows' links at a time (read when called)."""
    from ...analysis import neighbours

    return neighbours.duplicate_groups(paths, unit, threshold, rows=neighbours.ROWS, cols=neighbours.COLS,
                                       sub=neighbours.SUB)


def _embed(queries: list[str], meta: dict, index: str, dim: int, model: ModelOptions, options: RunOptions):
    """(path, vector) for each query image, failure records for the rest, and the exit code. A model whose
    vectors are not `dim` long (the index's) is a usage error naming the index."""
    from ...models.model import num_features
    from ...run.tasks import Embed

    arch = model.arch or meta.get("arch")
    weights = model.weights or meta.get("weights")
    if not arch or not weights:
        raise UsageError("this index does not say which model made it (.npy): give --arch and --weights to embed "
                         "the queries, or query paths that are in the index")
    job = make_job(queries, ModelOptions(arch, weights).resolve(), Embed(), options)
    made = num_features(job.weights.arch)
    if made != dim:
        job.inputs.close()
        raise UsageError(f"{index}: its vectors have {dim} numbers; {job.weights.arch.name} gives {made}: embed "
                         "the queries with the model that made the index (--arch, --weights)")
    vectors, failures = [], []
    with RecordStream(job, "embedding the queries") as stream:
        for rec in stream:
            if rec.ok:
                vectors.append((rec.path, rec.vector))
            else:
                failures.append({"query": rec.path, "error": {"type": rec.type, "message": rec.message}})
        code = stream.exit_code(len(failures))
    return vectors, failures, code


def _print(results: list[dict], fmt: Format) -> None:
    from ...outputs.writers import dumps

    if fmt is Format.jsonl:
        sys.stdout.write("".join(dumps(r) + "\n" for r in results))
    elif fmt is Format.json:
        sys.stdout.write(dumps(results) + "\n")
    else:
        def render(console) -> None:
            from rich.markup import escape

            for r in results:
                if "group" in r:
                    console.print(f"[bold]{len(r['group'])} near-duplicates[/] "
                                  f"(lowest similarity {r['similarity']:.3f})")
                    for p in r["group"]:
                        console.print(f"  {escape(p)}", soft_wrap=True)
                elif "error" in r:
                    console.print(f"[bold]{escape(r['query'])}[/]  [red]✗ {r['error']['type']}:[/] "
                                  f"{escape(r['error']['message'])}", soft_wrap=True)
                else:
                    console.print(f"[bold]{escape(r['query'])}[/]", soft_wrap=True)
                    for n in r["neighbours"]:
                        console.print(f"  {n['similarity']:.3f}  {escape(n['path'])}", soft_wrap=True)

        print_data(render)
    sys.stdout.flush()
