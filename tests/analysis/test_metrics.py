"""metrics.Evaluation against scikit-learn, and the Wilson interval against SciPy and the closed formula, on
synthetic records (no model)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from resnet_cli.analysis.metrics import Evaluation, wilson
from resnet_cli.core.records import Failure, Prediction, Success

NUM_CLASSES = 12
LABELS = tuple(f"c{i}" for i in range(NUM_CLASSES))


def success(path: str, ranking: list[int]) -> Success:
    topk = tuple(Prediction(r + 1, i, LABELS[i], 1.0 / (r + 2)) for r, i in enumerate(ranking))
    return Success(path, "resnet18", "w", 256, 224, topk)


def synthetic(seed: int, n: int, present: list[int], topk: int = 5, failure_rate: float = 0.1):
    """(records, truths): truths drawn from `present`, predictions right about half the time, else any class
    (often outside `present`), and some failures."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        truth = rng.choice(present)
        if rng.random() < failure_rate:
            out.append((Failure(f"img{k}.jpg", "corrupt", "damaged"), truth))
            continue
        ranking = rng.sample(range(NUM_CLASSES), topk)
        if rng.random() < 0.5 and truth not in ranking[:1]:
            if truth in ranking:
                ranking.remove(truth)
            else:
                ranking.pop()
            ranking.insert(0, truth)
        out.append((success(f"img{k}.jpg", ranking), truth))
    return out


def evaluate(pairs, present):
    ev = Evaluation(present, LABELS)
    for record, truth in pairs:
        ev.add(record, truth)
    return ev.summary()


@pytest.mark.parametrize("seed, present", [(0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]), (1, [1, 3, 4, 8]),
                                           (2, [11, 0, 5]), (3, [2, 7])])
def test_per_class_metrics_and_averages_equal_scikit_learn(seed, present):
    pairs = synthetic(seed, 300, present)
    s = evaluate(pairs, present)
    ok = [(r, t) for r, t in pairs if r.ok]
    y_true = [t for _, t in ok]
    y_pred = [r.topk[0].index for r, _ in ok]
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=sorted(present), zero_division=0)
    assert [c["index"] for c in s["classes"]] == sorted(present)
    assert [c["label"] for c in s["classes"]] == [LABELS[c] for c in sorted(present)]
    np.testing.assert_allclose([c["precision"] for c in s["classes"]], p, rtol=0, atol=1e-12)
    np.testing.assert_allclose([c["recall"] for c in s["classes"]], r, rtol=0, atol=1e-12)
    np.testing.assert_allclose([c["f1"] for c in s["classes"]], f, rtol=0, atol=1e-12)
    assert [c["support"] for c in s["classes"]] == support.tolist()
    for average in ("macro", "weighted"):
        expected = precision_recall_fscore_support(y_true, y_pred, labels=sorted(present), average=average,
                                                   zero_division=0)[:3]
        assert [s[average][k] for k in ("precision", "recall", "f1")] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed, present", [(4, [0, 2, 4, 6]), (5, list(range(NUM_CLASSES)))])
def test_accuracy_top5_and_counts_equal_scikit_learn(seed, present):
    pairs = synthetic(seed, 250, present)
    s = evaluate(pairs, present)
    ok = [(r, t) for r, t in pairs if r.ok]
    y_true = np.array([t for _, t in ok])
    scores = np.zeros((len(ok), NUM_CLASSES))  # a score per class from each ranking: higher is ranked earlier
    for row, (record, _) in enumerate(ok):
        for p in record.topk:
            scores[row, p.index] = 10 - p.rank
    assert s["images"] == len(pairs)
    assert s["failed"] == len(pairs) - len(ok) > 0
    assert s["evaluated"] == len(ok)
    assert s["top1"] == pytest.approx(accuracy_score(y_true, [r.topk[0].index for r, _ in ok]), abs=1e-12)
    assert s["top5"] == pytest.approx(top_k_accuracy_score(y_true, scores, k=5, labels=range(NUM_CLASSES)),
                                      abs=1e-12)


def test_the_confusion_matrix_is_scikit_learns_plus_a_column_for_other_classes():
    present = [1, 3, 4, 8]
    pairs = synthetic(6, 400, present)
    s = evaluate(pairs, present)
    ok = [(r, t) for r, t in pairs if r.ok]
    y_true = [t for _, t in ok]
    y_pred = [r.topk[0].index for r, _ in ok]
    matrix = np.array(s["confusion"]["matrix"])
    assert s["confusion"]["labels"] == ["c1", "c3", "c4", "c8"]
    assert matrix.shape == (4, 5)
    np.testing.assert_array_equal(matrix[:, :4], confusion_matrix(y_true, y_pred, labels=present))
    outside = [sum(1 for t, p in zip(y_true, y_pred) if t == c and p not in present) for c in present]
    assert matrix[:, 4].tolist() == outside and sum(outside) > 0


def test_a_class_never_predicted_has_zero_precision_and_f1_as_scikit_learn_says():
    present = [0, 1, 2]
    pairs = [(success("a", [0, 5]), 0), (success("b", [0, 1]), 1), (success("c", [1, 0]), 2),
             (success("d", [1, 2]), 2), (success("e", [7, 2]), 1)]  # class 2 is never predicted first
    s = evaluate(pairs, present)
    by_class = {c["index"]: c for c in s["classes"]}
    assert by_class[2] == {"label": "c2", "index": 2, "support": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    y_true = [t for _, t in pairs]
    y_pred = [r.topk[0].index for r, _ in pairs]
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
    assert [c["precision"] for c in s["classes"]] == pytest.approx(p.tolist())
    assert [c["f1"] for c in s["classes"]] == pytest.approx(f.tolist())
    # with fewer than five predictions, top5 means "among all predictions": a first, b and d second
    assert s["top1"] == pytest.approx(1 / 5) and s["top5"] == pytest.approx(3 / 5)


def test_misclassified_and_failed_images_are_listed_in_order():
    pairs = [(success("a", [0, 1]), 0), (success("b", [2, 1]), 1), (Failure("c", "truncated", "ends early"), 0),
             (success("d", [1, 0]), 0)]
    s = evaluate(pairs, [0, 1])
    assert s["misclassified"] == [
        {"path": "b", "label": "c1", "predicted": "c2", "probability": 0.5},
        {"path": "d", "label": "c0", "predicted": "c1", "probability": 0.5},
    ]
    assert s["failures"] == [{"path": "c", "error": {"type": "truncated", "message": "ends early"}}]
    assert (s["images"], s["evaluated"], s["failed"]) == (4, 3, 1)
    assert s["top1"] == pytest.approx(1 / 3)


def test_no_evaluated_image_gives_zeros_and_no_interval():
    s = evaluate([(Failure("a", "corrupt", "x"), 0)], [0, 1])
    assert (s["images"], s["evaluated"], s["failed"], s["top1"], s["top5"]) == (1, 0, 1, 0.0, 0.0)
    assert s["top1_ci"] is None and s["top5_ci"] is None
    assert s["macro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert s["weighted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# --- Wilson intervals ------------------------------------------------------------------------------------------

CASES = [(0, 10), (1, 10), (3, 10), (10, 10), (0, 1), (1, 1), (50, 100), (731, 1000), (999, 1000), (7, 2000)]


@pytest.mark.parametrize("k, n", CASES)
def test_wilson_equals_scipys_wilson_interval(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx([ci.low, ci.high], abs=1e-12)


@pytest.mark.parametrize("k, n", CASES)
def test_wilson_equals_the_closed_formula_in_counts(k, n):
    # Wilson (1927) written in counts: (k + z^2/2 -+ z sqrt(k (n - k) / n + z^2 / 4)) / (n + z^2), z from the
    # normal quantile function
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.975)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4)
    low, high = (k + z * z / 2 - half) / (n + z * z), (k + z * z / 2 + half) / (n + z * z)
    assert wilson(k, n) == pytest.approx([max(0.0, low), min(1.0, high)], abs=1e-12)


def test_wilson_of_nothing_is_none_and_the_summary_carries_the_intervals():
    assert wilson(0, 0) is None
    pairs = synthetic(7, 120, [0, 1, 2])
    s = evaluate(pairs, [0, 1, 2])
    n = s["evaluated"]
    assert s["top1_ci"] == wilson(round(s["top1"] * n), n)
    assert s["top5_ci"] == wilson(round(s["top5"] * n), n)
    low, high = s["top1_ci"]
    assert low < s["top1"] < high
