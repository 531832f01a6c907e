"""`resnet-classify similar`: nearest neighbours by cosine similarity in an embedding file (`embed`'s output),
and near-duplicate groups within it.

Exact search: a matrix product of unit vectors, in blocks of rows, so memory stays at the index plus one block
of similarities. It answers a million vectors in seconds per query batch; past that, or for many queries a
second, an approximate index (faiss, usearch) is the tool (docs/embed.md).

- A query that is a path in the index uses its stored vector and is not its own neighbour. Any other query is
  an image (a file, folder, glob, URL or `-`), embedded as `embed` does with the index's architecture and
  weights (from the file; `.npy` files carry none: give --arch and --weights) and the weights' preprocessing.
- `--duplicates` groups the index's vectors whose similarity reaches the threshold (0.95 by default), linked
  transitively; a group's similarity is the lowest between any two of its members.
"""

from __future__ import annotations

import enum
import sys
from typing import Annotated, Optional

import typer

from ..console import isatty, print_data
from ..errors import UsageError
from ..devices import Precision
from ..job import ModelOptions, RunOptions, make_job
from ..options import (ArchOpt, BatchSizeOpt, LocalDeviceOpt, LocalWorkersOpt, OfflineOpt, PrecisionOpt,
                       QuietOpt)
from .stream import RecordStream

BLOCK = 4096  # rows of the index compared at once


class SimilarFormat(str, enum.Enum):
    table = "table"
    jsonl = "jsonl"
    json = "json"


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
    format: Annotated[Optional[SimilarFormat], typer.Option(
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
    from .. import embeddings

    fmt = format or (SimilarFormat.table if isatty(sys.stdout) else SimilarFormat.jsonl)
    if duplicates and queries:
        raise UsageError("--duplicates looks within the index: give no QUERY")
    if not duplicates and not queries:
        raise UsageError("give a QUERY (a path in the index, or an image), or --duplicates")
    paths, matrix, meta = embeddings.read(index)
    if not len(paths):
        raise UsageError(f"{index}: the index holds no vectors")
    unit = _unit(matrix)
    if duplicates:
        results = list(duplicate_groups(paths, unit, 0.95 if threshold is None else threshold))
        code = 0
    else:
        position = {p: i for i, p in enumerate(paths)}
        results, code = [], 0
        pending: list[str] = []

        def flush() -> None:
            nonlocal code
            if pending:
                options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                                     offline=offline, quiet=quiet)
                vectors, failures, run_code = _embed(pending, meta, ModelOptions(arch, weights), options)
                code = max(code, run_code)
                for path, vector in vectors:
                    results.append(neighbours(path, vector, paths, unit, k, threshold, exclude=None))
                results.extend(failures)
                pending.clear()

        for q in queries:
            if q in position:
                flush()
                i = position[q]
                results.append(neighbours(q, unit[i], paths, unit, k, threshold, exclude=i))
            else:
                pending.append(q)
        flush()
    _print(results, fmt)
    raise typer.Exit(code)


def _unit(matrix):
    import numpy as np

    norms = np.linalg.norm(matrix.astype(np.float64), axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)


def neighbours(query: str, vector, paths: list[str], unit, k: int, threshold: float | None,
               exclude: int | None) -> dict:
    """The k paths most similar to `vector` (cosine), most similar first; ties in index order."""
    import numpy as np

    v = vector / (np.linalg.norm(vector) or 1.0)
    sims = unit @ v.astype(np.float32)
    if exclude is not None:
        sims[exclude] = -np.inf
    order = np.lexsort((np.arange(len(sims)), -sims))[:k]
    found = [{"path": paths[j], "similarity": float(sims[j])} for j in order if np.isfinite(sims[j])]
    if threshold is not None:
        found = [n for n in found if n["similarity"] >= threshold]
    return {"query": query, "neighbours": found}


def duplicate_groups(paths: list[str], unit, threshold: float):
    """{"group": [paths], "similarity": lowest pairwise} for each set of vectors linked by similarities at or
    above `threshold`, in index order; the matrix is compared a block of rows at a time."""
    import numpy as np

    n = len(paths)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, BLOCK):
        sims = unit[start:start + BLOCK] @ unit.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if c > i:
                a, b = find(i), find(c)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    for members in sorted((m for m in groups.values() if len(m) > 1), key=lambda m: m[0]):
        sub = unit[members] @ unit[members].T
        low = float(sub[np.triu_indices(len(members), 1)].min())
        yield {"group": [paths[i] for i in members], "similarity": low}


def _embed(queries: list[str], meta: dict, model: ModelOptions, options: RunOptions):
    """(path, vector) for each query image, failure records for the rest, and the exit code."""
    arch = model.arch or meta.get("arch")
    weights = model.weights or meta.get("weights")
    if not arch or not weights:
        raise UsageError("this index does not say which model made it (.npy): give --arch and --weights to embed "
                         "the queries, or query paths that are in the index")
    from ..tasks import Embed

    job = make_job(queries, ModelOptions(arch, weights).resolve(), Embed(), options)
    vectors, failures = [], []
    with RecordStream(job, "embedding the queries") as stream:
        for rec in stream:
            if rec.ok:
                vectors.append((rec.path, rec.vector))
            else:
                failures.append({"query": rec.path, "error": {"type": rec.type, "message": rec.message}})
        code = stream.exit_code(len(failures))
    return vectors, failures, code


def _print(results: list[dict], fmt: SimilarFormat) -> None:
    from ..writers import dumps

    if fmt is SimilarFormat.jsonl:
        sys.stdout.write("".join(dumps(r) + "\n" for r in results))
    elif fmt is SimilarFormat.json:
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
