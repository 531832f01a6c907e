"""What is wrong with a labelled image set (`resnet-classify audit`): label issues, near-duplicates, outliers.

All of it works on the frozen network's features (the vectors `embed` writes and `train` caches), one row per
image, and the images' given labels (class indices 0..C-1):

- Out-of-sample probabilities by K-fold cross-fitting (`stratified_folds`, `cross_fit`): each image's class
  probabilities come from the linear probe `train` fits (probe.fit: multinomial logistic regression, C times the
  summed cross-entropy plus half the squared L2 norm of the weights) trained on the other K-1 folds, so no
  image is judged by a head that saw its label.
- Label issues by confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in
  Dataset Labels", JAIR 70, 2021), with the defaults of its reference implementation (cleanlab 2.x
  `filter.find_label_issues`): per-class thresholds (the mean probability of a class over the images labelled
  with it), the calibrated confident joint, pruning by noise rate, the issues ranked by self-confidence
  (`label_issues`).
- Near-duplicates: pairs of images whose cosine similarity reaches a threshold, flagged when their labels differ
  (a contradiction) or when one is in DATA and the other in a second set (leakage) (`duplicate_pairs`).
- Outliers: the mean cosine distance to an image's K_NEIGHBOURS nearest other images (`knn_distance`), flagged
  above Tukey's far-out fence of all the images' distances (`outlier_fence`).

Everything is deterministic: the same features, labels and seed give the same answer to the bit.
"""

from __future__ import annotations

import numpy as np

MAX_ITER = 1000  # L-BFGS iterations of a fold's head at most: converged (train stops at 100 by default)
C = 1.0  # the probe's regularisation in cross-fitting: scikit-learn's default, train's choice without --val
DUPLICATE_THRESHOLD = 0.98  # cosine similarity at which two images are near-duplicates
K_NEIGHBOURS = 5  # neighbours of the outlier distance
FENCE = 3.0  # outliers lie above Q3 + FENCE * IQR of the distances (Tukey's "far out")

SMALL = 4_000_000  # features (N x D numbers) up to which the folds' heads are fitted on one thread (5x faster)
_EPS = 1e-6  # the tolerance of confident learning's comparisons (cleanlab's FLOATING_POINT_COMPARISON)


# ---- out-of-sample probabilities ----

def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) int64 fold of each image, 0..k-1: within each class (in class order) the images are shuffled by
    `seed` (numpy's PCG64) and dealt to the folds in turn, the turn carried over from one class to the next, so
    every fold holds each class's images within one and all folds are within one of each other in size.

    A class with fewer than k images leaves some fold without it: the caller refuses that (audit: a usage
    error naming the class)."""
    y = np.asarray(y, np.int64)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), np.int64)
    turn = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        folds[members] = (turn + np.arange(len(members))) % k
        turn = (turn + len(members)) % k
    return folds


def cross_fit(x: np.ndarray, y: np.ndarray, n_classes: int, folds: np.ndarray, c: float = C,
              max_iter: int = MAX_ITER, progress=None) -> np.ndarray:
    """(N, n_classes) float64 out-of-sample class probabilities: the rows of fold f predicted by the probe
    (probe.fit_blocks with regularisation `c`, at most `max_iter` L-BFGS iterations) fitted on every other fold.

    `x`: (N, D) features (any float dtype); `y`: (N,) class indices; `folds`: (N,) fold of each row. Equals
    scikit-learn's `cross_val_predict(LogisticRegression(C=c), x, y, cv=<the same folds>, method="predict_proba")`
    for three classes or more, once both optimisers have converged (scikit-learn's binary case has one weight
    vector, not two: for two classes it is LogisticRegression(C=2c)).

    Memory: one float64 copy of `x`, its rows ordered by fold and centred once (by the mean of all the rows: the
    bias is unpenalised, so any centring gives the same optimum), shared by every fold: a fold's training rows
    are the two slices before and after it (views), its held-out rows the slice itself."""
    import torch

    from . import probe

    y = np.asarray(y, np.int64)
    folds = np.asarray(folds)
    out = np.zeros((len(y), n_classes), np.float64)
    order = np.argsort(folds, kind="stable")
    xs, _ = probe.centred(x, order)
    ys = y[order]
    bounds = np.searchsorted(folds[order], np.unique(folds), side="left").tolist() + [len(y)]
    threads = torch.get_num_threads()
    if xs.size <= SMALL:  # a small head: thread start-up and sharing cost more than the arithmetic
        torch.set_num_threads(1)
    try:
        for start, end in zip(bounds[:-1], bounds[1:]):
            w, b = probe.fit_blocks([(xs[:start], ys[:start]), (xs[end:], ys[end:])], n_classes, c, max_iter)
            out[order[start:end]] = probe.predict_proba(xs[start:end], w, b)
            if progress is not None:
                progress()
    finally:
        torch.set_num_threads(threads)
    return out


# ---- confident learning ----

def confident_thresholds(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(C,) the per-class thresholds t_j: the mean probability of class j over the images labelled j (JAIR 2021,
    eq. 2); 2 (never reached) for a class no image is labelled with; at least 2e-6."""
    t = np.array([p[y == j, j].mean() if np.any(y == j) else 2.0 for j in range(p.shape[1])])
    return np.clip(t, 2 * _EPS, None)


def confident_joint(y: np.ndarray, p: np.ndarray, calibrate: bool = True) -> np.ndarray:
    """(C, C) int64 confident joint: entry [i, j] counts the images labelled i whose probability of class j
    reaches t_j (within 1e-6; of several such classes, the most probable one). Its diagonal is at least 1.
    Calibrated (section 3.1 of the paper): each row rescaled to the number of images labelled i, the whole to
    N, then rounded preserving each row's total."""
    y = np.asarray(y, np.int64)
    n_classes = p.shape[1]
    above = p >= confident_thresholds(y, p) - _EPS
    count = above.sum(axis=1)
    guess = np.where(count > 1, p.argmax(axis=1), above.argmax(axis=1))
    sure = count > 0
    # counted as [true, given] and transposed: the reference's memory layout, on which the float sums of the
    # calibration below depend to the last bit (and with them the rounding of ties)
    cj = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cj, (guess[sure], y[sure]), 1)
    cj = cj.T
    np.fill_diagonal(cj, np.maximum(cj.diagonal(), 1))
    if not calibrate:
        return cj
    given = np.bincount(y, minlength=n_classes)
    scaled = (cj.T / np.clip(cj.sum(axis=1), 1e-100, None) * given).T
    scaled = scaled / np.clip(scaled.sum(), 1e-100, None) * given.sum()
    return _round_rows(scaled)


def _round_preserving_sum(values: np.ndarray) -> np.ndarray:
    """Integers near `values` (rounded half to even) with the rounded total of `values`: the largest
    remainders rounded up (or the smallest down) until the totals agree."""
    floats = np.asarray(values, float)
    ints = floats.round()
    target = floats.sum().round()
    total = ints.sum().round()
    while abs(total - target) > _EPS:
        step = -1 if target - total < 0 else 1
        changes = min(int(abs(np.round(target - total))), len(floats))
        order = np.argsort(floats - ints)[::-step][:changes]
        for i in order:
            ints[i] += step
        total = ints.sum().round()
    return ints.astype(np.int64)


def _round_rows(matrix: np.ndarray) -> np.ndarray:
    return np.stack([_round_preserving_sum(row) for row in matrix]).astype(np.int64)


def _prune_counts(cj: np.ndarray, keep: int = 1) -> np.ndarray:
    """(C, C) how many images to prune: [j, i] of images labelled i that truly are j, from the transposed
    confident joint, each class keeping at least `keep` images (the rest of its column lowered evenly, never
    below 0); counts are truncated to integers."""
    m = cj.T.astype(float)
    diagonal = m.diagonal()
    raised = np.maximum(diagonal, keep)
    spread = np.maximum(np.count_nonzero(m, axis=0) - 1.0, 1.0)
    out = m - (raised - diagonal) / spread
    out[out < 0] = 0
    np.fill_diagonal(out, raised)
    return out.astype(np.int64)


def self_confidence(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(N,) the out-of-sample probability of each image's given label: low means the label is doubtful."""
    return p[np.arange(len(y)), y]


def normalized_margin(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(N,) (p[given] - max p[other] + 1) / 2, in [0, 1]: low means another class is clearly more likely."""
    other = p.copy()
    other[np.arange(len(y)), y] = -np.inf
    return (self_confidence(y, p) - other.max(axis=1) + 1) / 2


RANKINGS = {"self_confidence": self_confidence, "normalized_margin": normalized_margin}


def label_issues(y: np.ndarray, p: np.ndarray, rank_by: str = "self_confidence") -> tuple[np.ndarray, np.ndarray]:
    """(indices of the likely label errors, most likely first; the calibrated confident joint).

    Prune by noise rate (the paper's Cl:PBNR): for each given class i and each other class j, of the images
    labelled i, the n[j, i] with the largest margin p[j] - p[i] are issues, n the prune counts of the
    calibrated confident joint; then an image whose given label is its most probable class (within 1e-6) is no
    issue. Ranked by `rank_by` ("self_confidence" or "normalized_margin"), lowest first. The same indices in the
    same order as cleanlab's `find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate",
    return_indices_ranked_by=rank_by)` (tested), numpy's default sort included."""
    y = np.asarray(y, np.int64)
    p = np.asarray(p, np.float64)
    n_classes = p.shape[1]
    cj = confident_joint(y, p)
    prune = _prune_counts(cj)
    issue = np.zeros(len(y), bool)
    for i in range(n_classes):
        members = np.flatnonzero(y == i)
        if len(members) <= 1:
            continue
        mine = np.zeros(len(members), bool)
        for j in range(n_classes):
            n = prune[j, i]
            if j != i and n > 0:
                margin = p[members, j] - p[members, i]
                mine[np.argsort(-margin)[:n]] = True
        issue[members] = mine
    boosted = p.copy()
    boosted[np.arange(len(y)), y] += _EPS
    issue &= boosted.argmax(axis=1) != y
    found = np.flatnonzero(issue)
    scores = RANKINGS[rank_by](y, p)
    return found[np.argsort(scores[found])], cj


def noise_rates(cj: np.ndarray) -> np.ndarray:
    """(C,) the estimated share of each class's images whose true class is another: 1 - cj[i, i] / sum_j cj[i, j]
    of the calibrated confident joint (0 for a class with no images)."""
    rows = cj.sum(axis=1)
    return np.where(rows > 0, 1 - cj.diagonal() / np.maximum(rows, 1), 0.0)


# ---- outliers and duplicates ----

def knn_distance(unit: np.ndarray, k: int = K_NEIGHBOURS, groups: np.ndarray | None = None) -> np.ndarray:
    """(N,) float64 mean cosine distance (1 - similarity) from each unit row to its k nearest other rows; with
    `groups` (N,) only to rows of its own group (a class). NaN where the row has no other row to compare with.
    Blockwise (neighbours.knn): memory one tile beyond the vectors."""
    from . import neighbours

    out = np.full(len(unit), np.nan)
    parts = [np.arange(len(unit))] if groups is None else [np.flatnonzero(groups == g) for g in np.unique(groups)]
    for rows in parts:
        if len(rows) < 2:
            continue
        sims = neighbours.knn(unit[rows] if groups is not None else unit, k).astype(np.float64)
        out[rows] = (1.0 - sims).mean(axis=1)
    return out


def outlier_fence(distances: np.ndarray, fence: float = FENCE) -> float:
    """Q3 + fence * (Q3 - Q1) of the finite `distances` (Tukey's fences; 3 is his "far out"); inf when there
    are none."""
    d = distances[np.isfinite(distances)]
    if not len(d):
        return float("inf")
    q1, q3 = np.percentile(d, [25, 75])
    return float(q3 + fence * (q3 - q1))


def duplicate_pairs(unit: np.ndarray, y: np.ndarray, threshold: float = DUPLICATE_THRESHOLD,
                    against: np.ndarray | None = None) -> list[tuple[int, int, float, str]]:
    """(i, j, similarity, reason) for each pair at or above `threshold` cosine similarity that is a finding:
    "contradiction" for two rows of `unit` (i < j) with different labels `y`, "leakage" for row i of `unit` and
    row j of `against` (a second set, whatever the labels). Pairs, never transitive groups: a chain of
    similar images is not one duplicate. Most similar first, then by (i, j); blockwise (neighbours.pairs)."""
    from . import neighbours

    found: list[tuple[int, int, float, str]] = []
    y = np.asarray(y)
    for i, j, s in neighbours.pairs(unit, None, threshold):
        differ = y[i] != y[j]
        found += zip(i[differ].tolist(), j[differ].tolist(), s[differ].tolist(), ["contradiction"] * int(differ.sum()))
    if against is not None and len(against):
        for i, j, s in neighbours.pairs(unit, against, threshold):
            found += zip(i.tolist(), j.tolist(), s.tolist(), ["leakage"] * len(i))
    found.sort(key=lambda f: (-f[2], f[3] != "contradiction", f[0], f[1]))
    return found


# ---- the whole audit ----

KINDS = ("label_issue", "duplicate", "outlier")


def audit(paths: list[str], labels: np.ndarray, classes: list[str], x: np.ndarray, *, folds: int = 5, seed: int = 0,
          threshold: float = DUPLICATE_THRESHOLD, k: int = K_NEIGHBOURS, max_iter: int = MAX_ITER,
          against: tuple[list[str], list[str], np.ndarray] | None = None, progress=None) -> tuple[list[dict], dict]:
    """(findings, summary) of a labelled set: `paths` (N,), `labels` (N,) class indices into `classes`, `x`
    (N, D) features; `against`: (paths, labels, features) of a second set looked at for leakage only: its
    labels (any names, in `classes` or not) are only copied into its duplicates' `other_label`.

    Findings, in this order: the label issues (lowest self-confidence first), the near-duplicates (most similar
    first; contradictions before leakage at equal similarity), the outliers (farthest first); ties in DATA's
    order. Each is {"path", "kind", "given_label", "suggested_label", "score", ...} (docs/audit.md). Every class
    needs at least `folds` rows (ValueError otherwise: the caller names the classes)."""
    y = np.asarray(labels, np.int64)
    n_classes = len(classes)
    fold = stratified_folds(y, folds, seed)
    p = cross_fit(x, y, n_classes, fold, C, max_iter, progress=progress)
    issues, cj = label_issues(y, p, "self_confidence")
    confidence = self_confidence(y, p)
    found: list[dict] = []
    for i in issues.tolist():
        s = int(p[i].argmax())
        found.append({"path": paths[i], "kind": "label_issue", "given_label": classes[y[i]],
                      "suggested_label": classes[s], "score": float(confidence[i]),
                      "suggested_probability": float(p[i, s])})

    from . import neighbours

    unit = neighbours.unit(x)
    other = neighbours.unit(against[2]) if against is not None and len(against[0]) else None
    for i, j, sim, reason in duplicate_pairs(unit, y, threshold, other):  # a copy's score: 1 (rounding aside)
        if reason == "leakage":
            other_path, other_label = against[0][j], against[1][j]
        else:
            other_path, other_label = paths[j], classes[y[j]]
        found.append({"path": paths[i], "kind": "duplicate", "given_label": classes[y[i]], "suggested_label": None,
                      "score": min(sim, 1.0), "reason": reason, "other_path": other_path, "other_label": other_label})

    overall = knn_distance(unit, k)
    own = knn_distance(unit, k, y)
    fence = outlier_fence(overall)
    far = np.flatnonzero(overall > fence)
    for i in far[np.lexsort((far, -overall[far]))].tolist():
        found.append({"path": paths[i], "kind": "outlier", "given_label": classes[y[i]], "suggested_label": None,
                      "score": float(overall[i]),
                      "class_distance": None if np.isnan(own[i]) else float(own[i])})

    rates = noise_rates(cj)
    counts = np.bincount(y, minlength=n_classes)
    per_class = {c: {"images": int(counts[i]), "noise_rate": float(rates[i]), **{kind: 0 for kind in KINDS}}
                 for i, c in enumerate(classes)}
    for f in found:  # a contradiction counts in both its classes
        touched = {f["given_label"]} | ({f["other_label"]} if f.get("reason") == "contradiction" else set())
        for c in touched:
            per_class[c][f["kind"]] += 1
    summary = {
        "images": len(paths), "classes": list(classes), "folds": folds, "seed": seed, "C": C,
        "findings": {kind: sum(f["kind"] == kind for f in found) for kind in KINDS},
        "per_class": per_class,
        "estimated_noise_rate": float(1 - np.trace(cj) / max(cj.sum(), 1)),
        "cross_fitted_accuracy": float((p.argmax(axis=1) == y).mean()),
        "thresholds": {"duplicate_similarity": threshold,
                       "outlier_distance": fence if np.isfinite(fence) else None, "neighbours": k},
        "against": None if against is None else len(against[0]),
    }
    return found, summary
