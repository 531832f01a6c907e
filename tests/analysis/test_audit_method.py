"""The audit's method on numbers alone: confident learning equals its reference implementation (cleanlab, a
test-only oracle: it is AGPL-3.0), the cross-fitted probe equals scikit-learn's cross_val_predict, the folds
are stratified and seeded, and the blockwise neighbour engine equals a brute-force search at any tile size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from resnet_cli.analysis import audit, neighbours


def _probabilities(seed: int):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    n = int(rng.integers(3 * k, 300))
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    logits = rng.normal(size=(n, k)) * rng.uniform(0.5, 4)
    logits[np.arange(n), y] += rng.uniform(0, 3)
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("rank_by", ["self_confidence", "normalized_margin"])
def test_label_issues_equal_cleanlabs_find_label_issues(rank_by):
    from cleanlab.count import compute_confident_joint
    from cleanlab.filter import find_label_issues

    found = 0
    for seed in range(60):
        y, p = _probabilities(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cleanlab's "too few examples in class" notes
            expected = find_label_issues(y, p, filter_by="prune_by_noise_rate", return_indices_ranked_by=rank_by,
                                         n_jobs=1)
        got, joint = audit.label_issues(y, p, rank_by)
        assert got.tolist() == expected.tolist(), seed  # the same set, in the same order
        assert joint.tolist() == compute_confident_joint(y, p).tolist()
        found += len(got)
    assert found > 500


def test_a_tie_in_the_calibrated_joint_rounds_as_the_reference_does():
    """Seed 45 rounds a row of three equal remainders: the last bit of the float sums decides, and with it
    the prune counts (a set that was one issue off before the joint kept the reference's memory layout)."""
    from cleanlab.filter import find_label_issues

    y, p = _probabilities(45)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = find_label_issues(y, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    assert audit.label_issues(y, p)[0].tolist() == expected.tolist()


def test_noise_rates_come_from_the_calibrated_joint():
    joint = np.array([[8, 2], [1, 9]])
    assert audit.noise_rates(joint).tolist() == pytest.approx([0.2, 0.1])


def _blobs(k: int, n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    x = rng.normal(size=(k, d))[y] + rng.normal(scale=1.5, size=(len(y), d))
    return x.astype(np.float32), y


def test_cross_fitted_probabilities_equal_scikit_learns_cross_val_predict():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from threadpoolctl import threadpool_limits

    x, y = _blobs(4, 120, 48)
    folds = audit.stratified_folds(y, 5, 3)
    cv = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(5)]
    for c in (0.1, 1.0):
        ours = audit.cross_fit(x, y, 4, folds, c)
        with threadpool_limits(1):  # a small problem: BLAS threads only wait for each other on a busy machine
            theirs = cross_val_predict(LogisticRegression(C=c, tol=1e-8, max_iter=10_000), x.astype(np.float64), y,
                                       cv=cv, method="predict_proba")
        assert np.abs(ours - theirs).max() < 1e-4
    # two classes: scikit-learn fits one weight vector, the probe two (w1 - w0 = w): its C is twice the probe's
    y2 = (y >= 2).astype(int)
    folds = audit.stratified_folds(y2, 5, 0)
    cv = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(5)]
    ours = audit.cross_fit(x, y2, 2, folds, 1.0)
    with threadpool_limits(1):
        theirs = cross_val_predict(LogisticRegression(C=2.0, tol=1e-8, max_iter=10_000), x.astype(np.float64), y2,
                                   cv=cv, method="predict_proba")
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.abs(ours - audit.cross_fit(x, y2, 2, folds, 2.0)).max() > 1e-3  # not the same C: the test can fail


def test_the_folds_share_one_float64_copy_of_the_features():
    """Cross-fitting holds one float64 copy of the features for all its folds (numpy's allocations, traced;
    beyond it, a block of 4096 rows while making it): a copy of each fold's training rows and a centred copy of
    that would be twice as much."""
    import tracemalloc

    x, y = _blobs(4, 24000, 64)
    folds = audit.stratified_folds(y, 5, 0)
    audit.cross_fit(x[:40], y[:40], 4, folds[:40], max_iter=5)  # torch imported and started: not traced
    copy = x.size * 8
    tracemalloc.start()
    try:
        audit.cross_fit(x, y, 4, folds, max_iter=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert copy <= peak < 1.3 * copy, f"peak {peak / copy:.2f} float64 copies"


def test_folds_are_stratified_seeded_and_balanced():
    y = np.array([0] * 13 + [1] * 7 + [2] * 5)
    folds = audit.stratified_folds(y, 5, 0)
    assert folds.tolist() == audit.stratified_folds(y, 5, 0).tolist()
    assert folds.tolist() != audit.stratified_folds(y, 5, 1).tolist()
    for c in range(3):
        per = np.bincount(folds[y == c], minlength=5)
        assert per.max() - per.min() <= 1
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1


def test_the_cross_fit_is_the_same_to_the_bit_run_after_run():
    x, y = _blobs(3, 60, 16, seed=2)
    folds = audit.stratified_folds(y, 4, 0)
    assert audit.cross_fit(x, y, 3, folds).tobytes() == audit.cross_fit(x, y, 3, folds).tobytes()


# ---- the neighbour engine ----

def _vectors(seed: int = 1):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(12, 10))
    return neighbours.unit(np.concatenate([
        base[rng.integers(0, 12, 70)] + rng.normal(scale=0.15, size=(70, 10)),
        rng.normal(size=(25, 10)), np.zeros((2, 10))]).astype(np.float32))


@pytest.mark.parametrize("rows,cols,sub", [(1024, 4096, 128), (8, 20, 3), (7, 13, 2)])
def test_pairs_and_knn_across_tile_edges_equal_a_brute_force_search(rows, cols, sub):
    unit = _vectors()
    sims = unit @ unit.T
    got = sorted((i, j, s) for a, b, c in neighbours.pairs(unit, None, 0.9, rows=rows, cols=cols, sub=sub)
                 for i, j, s in zip(a.tolist(), b.tolist(), c.tolist()))
    expected = [(i, j) for i in range(len(unit)) for j in range(i + 1, len(unit)) if sims[i, j] >= 0.9]
    assert [(i, j) for i, j, _ in got] == expected and len(expected) > 50
    assert [s for *_, s in got] == pytest.approx([sims[i, j] for i, j in expected], abs=1e-6)

    other = unit[:30][::-1].copy()
    cross = sorted((i, j) for a, b, _ in neighbours.pairs(unit, other, 0.9, rows=rows, cols=cols, sub=sub)
                   for i, j in zip(a.tolist(), b.tolist()))
    full = unit @ other.T
    assert cross == [(i, j) for i in range(len(unit)) for j in range(len(other)) if full[i, j] >= 0.9]

    near = neighbours.knn(unit, 4, rows=rows, cols=cols)
    masked = sims.copy()
    np.fill_diagonal(masked, -np.inf)
    assert near == pytest.approx(-np.sort(-masked, axis=1)[:, :4], abs=1e-6)


def test_duplicates_are_pairs_never_chains():
    """a ~ b and b ~ c but not a ~ c: two pairs, a chain is not one group; same labels are no finding, and a
    pair across the two sets is leakage whatever the labels."""
    angle = np.deg2rad([0, 10, 20, 90])
    vectors = neighbours.unit(np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32))
    threshold = float(np.cos(np.deg2rad(12)))
    found = audit.duplicate_pairs(vectors, np.array([0, 1, 2, 0]), threshold)
    assert [(i, j, r) for i, j, _, r in found] == [(0, 1, "contradiction"), (1, 2, "contradiction")]
    assert audit.duplicate_pairs(vectors, np.array([0, 0, 0, 1]), threshold) == []
    leaks = audit.duplicate_pairs(vectors, np.array([0, 0, 0, 1]), threshold, against=vectors[[3, 0]])
    assert [(i, j, r) for i, j, _, r in leaks] == [(0, 1, "leakage"), (3, 0, "leakage"), (1, 1, "leakage")]


def test_outliers_are_far_from_their_k_nearest_neighbours():
    rng = np.random.default_rng(0)
    cluster = rng.normal(size=(1, 16)) + rng.normal(scale=0.1, size=(40, 16))
    odd = rng.normal(size=(2, 16)) * 3
    unit = neighbours.unit(np.concatenate([cluster, odd]).astype(np.float32))
    distance = audit.knn_distance(unit, 5)
    fence = audit.outlier_fence(distance)
    assert np.flatnonzero(distance > fence).tolist() == [40, 41]
    groups = np.array([0] * 41 + [1])
    own = audit.knn_distance(unit, 5, groups)
    assert np.isnan(own[41]) and own[:40] == pytest.approx(distance[:40], abs=1e-6)
