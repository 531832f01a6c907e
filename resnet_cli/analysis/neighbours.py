"""Exact cosine near-neighbour search over feature vectors, a tile of similarities at a time: the one engine of
`similar --duplicates` and `audit` (near-duplicates, k-nearest-neighbour outlier distances).

Every function takes unit vectors (`unit`): float32 (N, D) rows of length 1 (zero rows stay zero and are similar
to nothing), and compares them in tiles of ROWS x COLS similarities (16 MB of float32), so memory beyond the
vectors themselves is one tile, whatever N. Similarities are float32 dot products of the unit rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Tiles of ROWS x COLS similarities; the links/pairs of SUB rows of a tile gathered at a time (at most SUB x COLS
# pairs: 8 MB of indices).
ROWS = 1024
COLS = 4096
SUB = 128


def unit(matrix) -> np.ndarray:
    """The rows of `matrix` (N, D; any real dtype, an np.memmap too) scaled to unit length in float64 and
    returned as float32 (N, D); zero rows stay zero. A block of 4096 rows at a time."""
    out = np.empty(matrix.shape, np.float32)
    for start in range(0, len(matrix), 4096):
        part = matrix[start:start + 4096]
        norms = np.linalg.norm(part.astype(np.float64), axis=1, keepdims=True)
        out[start:start + 4096] = part / np.where(norms == 0, 1, norms)
    return out


def tiles(a: np.ndarray, b: np.ndarray | None = None, *, rows: int = ROWS,
          cols: int = COLS) -> Iterator[tuple[int, int, np.ndarray]]:
    """(row start, column start, similarities) for each tile of a @ b.T (float32, at most rows x cols), rows
    outer. With `b` None, a against itself: only the tiles that reach the upper triangle (column start at or
    after the tile's row start); `upper` masks the rest of a tile that crosses the diagonal."""
    same = b is None
    b = a if same else b
    n, m = len(a), len(b)
    for rs in range(0, n, rows):
        re_ = min(rs + rows, n)
        block = a[rs:re_]
        for cs in range(rs if same else 0, m, cols):
            yield rs, cs, block @ b[cs:min(cs + cols, m)].T


def upper(mask: np.ndarray, rs: int, cs: int) -> np.ndarray:
    """`mask` of a self-comparison tile at (rs, cs) keeping only pairs i < j (each pair once, never with
    itself)."""
    if cs < rs + mask.shape[0]:
        return np.triu(mask, rs - cs + 1)
    return mask


def pairs(a: np.ndarray, b: np.ndarray | None = None, threshold: float = 0.95, *, rows: int = ROWS,
          cols: int = COLS, sub: int = SUB) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pair of rows whose cosine similarity is at least `threshold`, as arrays (i, j, similarity) of at
    most sub x cols pairs at a time: i a row of `a`, j a row of `b`; with `b` None, pairs within `a` with i < j.
    In tile order (blocks of rows, then of columns), not sorted (int64, int64, float32). Memory: one tile and one batch of
    pairs, whatever N and however many pairs there are (the caller keeps what it needs)."""
    same = b is None
    for rs, cs, sims in tiles(a, b, rows=rows, cols=cols):
        mask = sims >= threshold
        if same:
            mask = upper(mask, rs, cs)
        for ss in range(0, len(mask), sub):
            part = mask[ss:ss + sub]
            if not part.any():
                continue
            r, c = np.nonzero(part)
            yield (rs + ss + r).astype(np.int64), (cs + c).astype(np.int64), sims[ss + r, c]


def knn(a: np.ndarray, k: int, *, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """(N, k') float32 similarities of each row's k nearest other rows (by cosine), most similar first, where
    k' = min(k, N - 1); a row is never its own neighbour (an identical copy of it is). One tile and each
    block's k best at a time."""
    n = len(a)
    k = min(k, n - 1)
    out = np.empty((n, max(k, 0)), np.float32)
    if k <= 0:
        return out
    for rs in range(0, n, rows):
        re_ = min(rs + rows, n)
        block = a[rs:re_]
        best = np.full((re_ - rs, k), -np.inf, np.float32)
        for cs in range(0, n, cols):
            ce = min(cs + cols, n)
            sims = block @ a[cs:ce].T
            lo, hi = max(rs, cs), min(re_, ce)
            if lo < hi:  # the tile crosses the diagonal: a row is not its own neighbour
                idx = np.arange(lo, hi)
                sims[idx - rs, idx - cs] = -np.inf
            both = np.concatenate([best, sims], axis=1)
            best = -np.partition(-both, k - 1, axis=1)[:, :k]
        out[rs:re_] = -np.sort(-best, axis=1)
    return out


def duplicate_groups(paths: list[str], unit: np.ndarray, threshold: float, *, rows: int = ROWS, cols: int = COLS,
                     sub: int = SUB):
    """{"group": [paths], "similarity": lowest pairwise} for each set of vectors linked by similarities at or
    above `threshold` (transitively), groups in the order of their first member, members in index order.

    `unit`: (N, D) float32 unit vectors. Each pair is compared once, in tiles of rows x cols similarities over
    the upper triangle; only the links that join two groups not yet joined are kept, a sub-block of rows at a
    time, in a union-find array of N integers. Memory beyond the index: one tile and one sub-block's links
    (tens of MB), whatever N and however many pairs are similar. A group's lowest similarity is computed the
    same way over its members; the groups themselves (their paths) are the answer's size."""
    n = len(paths)
    parent = np.arange(n)
    for rs, cs, sims in tiles(unit, rows=rows, cols=cols):
        mask = upper(sims >= threshold, rs, cs)
        ce = cs + sims.shape[1]
        for ss in range(0, len(mask), sub):
            part = mask[ss:ss + sub]
            if not part.any():
                continue
            members = np.arange(rs + ss, rs + ss + len(part))
            others = np.arange(cs, ce)
            part = part & (parent[members][:, None] != parent[others][None, :])  # already one group: skip
            r, c = np.nonzero(part)
            _link(parent, members[r], others[c])
    sizes = np.bincount(parent, minlength=n)
    members = np.nonzero(sizes[parent] > 1)[0]  # index order
    # Each group's root is its first member (links hook the larger root under the smaller): sorting the
    # members by root, stably, gives the groups in the order of their first member, each in index order.
    members = members[np.argsort(parent[members], kind="stable")]
    bounds = np.nonzero(np.diff(parent[members]))[0] + 1
    for group in np.split(members, bounds) if len(members) else []:
        yield {"group": [paths[i] for i in group.tolist()], "similarity": _lowest(unit, group, rows, cols)}


def _link(parent, a, b) -> None:
    """Union the groups of the pairs (a[i], b[i]) in `parent`, a fully compressed union-find array (each entry
    its group's root, the group's smallest index), and leave it fully compressed."""
    while len(a):
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        if not len(a):
            return
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))  # each root under its smallest neighbour
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent[:] = up


def _lowest(unit, members, rows: int = ROWS, cols: int = COLS) -> float:
    """The lowest similarity between two of `members` (index rows, at least 2), a tile at a time."""
    m = len(members)
    if m <= rows:
        sub = unit[members] @ unit[members].T
        return float(sub[np.triu_indices(m, 1)].min())
    low = np.inf
    for rs in range(0, m, rows):
        block = unit[members[rs:rs + rows]]
        for cs in range(rs, m, cols):
            sims = block @ unit[members[cs:cs + cols]].T
            if cs < rs + len(block):
                sims = np.where(np.triu(np.ones(sims.shape, bool), rs - cs + 1), sims, np.inf)
            low = min(low, float(sims.min()))
    return low
