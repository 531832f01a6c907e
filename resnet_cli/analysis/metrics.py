"""Accuracy, per-class precision/recall/F1 and the confusion matrix, accumulated one record at a time.

Memory is the confusion matrix (present classes squared) and the lists of misclassified and failed images;
nothing is kept per correct image.

Definitions (the JSON keys are a contract, docs/evaluate.md):
- top1/top5: fractions of the evaluated images (failures excluded) whose label is the first / among the first
  five predictions (among all predictions when the model has fewer than five classes); `_ci` the 95% Wilson
  score interval.
- Per class, over the classes present in the data, as scikit-learn's `precision_recall_fscore_support(y_true,
  y_pred, labels=present)` computes them: a prediction of any other class counts as wrong; precision, recall
  or F1 with a zero denominator is 0. `macro` is their mean, `weighted` their mean weighted by support.
- `confusion`: a row per present class (its true label), a column per present class, in class-index order,
  and one last column, "other", for predictions outside them.
"""

from __future__ import annotations

import math

from ..core.records import Record

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal distribution


def wilson(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a proportion, [low, high]; None for n = 0."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _ratio(a: float, b: int) -> float:
    return a / b if b else 0.0


class Evaluation:
    """Feed it each record with its true class index; `summary()` gives the metrics."""

    def __init__(self, present: list[int], labels: tuple[str, ...]) -> None:
        self.present = sorted(present)
        self.labels = labels
        self.column = {c: i for i, c in enumerate(self.present)}
        other = len(self.present)
        self.matrix = [[0] * (other + 1) for _ in self.present]
        self.images = self.top1 = self.top5 = 0
        self.misclassified: list[dict] = []
        self.failures: list[dict] = []

    def add(self, record: Record, truth: int) -> None:
        self.images += 1
        if not record.ok:
            self.failures.append(record.to_dict())
            return
        predicted = [p.index for p in record.topk]
        first = record.topk[0]
        self.top1 += predicted[0] == truth
        self.top5 += truth in predicted[:5]
        self.matrix[self.column[truth]][self.column.get(first.index, len(self.present))] += 1
        if first.index != truth:
            self.misclassified.append({"path": record.path, "label": self.labels[truth], "predicted": first.label,
                                       "probability": first.probability})

    @property
    def evaluated(self) -> int:
        return self.images - len(self.failures)

    def classes(self) -> list[dict]:
        out = []
        for i, c in enumerate(self.present):
            tp = self.matrix[i][i]
            support = sum(self.matrix[i])
            predicted = sum(row[i] for row in self.matrix)
            precision, recall = _ratio(tp, predicted), _ratio(tp, support)
            f1 = _ratio(2 * tp, support + predicted)  # = 2PR/(P+R), and 0 where scikit-learn says 0
            out.append({"label": self.labels[c], "index": c, "support": support, "precision": precision,
                        "recall": recall, "f1": f1})
        return out

    def summary(self) -> dict:
        """The metrics without the model's names and speed (the command adds those)."""
        classes = self.classes()
        n = self.evaluated
        total = sum(c["support"] for c in classes)

        def average(key: str, weighted: bool) -> float:
            if not classes:
                return 0.0
            if weighted:
                return _ratio(sum(c[key] * c["support"] for c in classes), total)
            return sum(c[key] for c in classes) / len(classes)

        return {
            "images": self.images,
            "evaluated": n,
            "failed": len(self.failures),
            "top1": _ratio(self.top1, n),
            "top5": _ratio(self.top5, n),
            "top1_ci": wilson(self.top1, n),
            "top5_ci": wilson(self.top5, n),
            "classes": classes,
            "macro": {k: average(k, False) for k in ("precision", "recall", "f1")},
            "weighted": {k: average(k, True) for k in ("precision", "recall", "f1")},
            "confusion": {"labels": [self.labels[c] for c in self.present], "matrix": self.matrix},
            "misclassified": self.misclassified,
            "failures": self.failures,
        }

