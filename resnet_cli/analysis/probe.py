"""A linear probe: a new classifier head on the frozen network's features (`resnet-classify train`).

Features are the vectors `embed` writes, extracted once and cached on disk, one file per image, under a key of
the image's content (SHA-256) and the model (architecture, the weights' identity, preprocessing, precision,
device type): a second `train` over the same images with other settings reads them back and extracts
nothing. The cache lives in `$RESNET_CLASSIFY_CACHE`, else `$XDG_CACHE_HOME/resnet-classify`, else
`~/.cache/resnet-classify`; deleting it is always safe.

The head is a multinomial logistic regression fitted by L-BFGS in float64 (on centred features) on the whole
training set at once, with scikit-learn's objective (C times the summed cross-entropy, plus half the squared L2 norm of the weights;
the bias is not penalised). C is chosen on the validation split from a fixed grid (best accuracy, then best
log-loss, then the stronger regularisation). Full-batch L-BFGS has no randomness: the same split gives the
same head, to the bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def cache_root() -> Path:
    root = os.environ.get("RESNET_CLASSIFY_CACHE")
    if root:
        return Path(root)
    return Path(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache"))) / "resnet-classify"


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_key(weights, precision: str, device_type: str) -> str:
    """What the features depend on besides the image. A checkpoint is identified by its content."""
    identity = weights.spec.full_name if weights.spec is not None else "sha256:" + file_digest(weights.name)
    pre = weights.preprocess
    key = {"arch": weights.arch.name, "weights": identity, "resize": pre.resize, "crop": pre.crop,
           "mean": list(pre.mean), "std": list(pre.std), "interpolation": pre.interpolation,
           "precision": precision, "device": device_type}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


class FeatureCache:
    def __init__(self, key: str) -> None:
        self.folder = cache_root() / "features" / key

    def _file(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        """The cached vector of the image whose content has SHA-256 `digest`, or None when there is none or its
        file cannot be read back (missing, empty, torn, not an .npy): a miss, never an error."""
        try:
            return np.load(self._file(digest), allow_pickle=False)
        except (OSError, ValueError, EOFError):  # numpy raises EOFError for an empty file
            return None

    def put(self, digest: str, vector: np.ndarray) -> None:
        """Cache `vector` (float32) for the image whose content has SHA-256 `digest`, atomically."""
        from ..core.files import AtomicFile

        target = self._file(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        with AtomicFile(str(target)) as atomic:
            np.save(atomic.file, np.ascontiguousarray(vector, np.float32))


def centred(x: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x[rows] minus its column means, those means): a new float64 (len(rows), D) array and (D,) float64, made
    in one copy, 4096 rows at a time, and centred in place (`x`, any float dtype or an np.memmap, is never
    changed). `rows` None: every row, in order."""
    n = len(x) if rows is None else len(rows)
    out = np.empty((n, x.shape[1]), np.float64)
    for start in range(0, n, 4096):
        out[start:start + 4096] = x[start:start + 4096] if rows is None else x[rows[start:start + 4096]]
    mean = out.mean(axis=0) if n else np.zeros(x.shape[1])
    out -= mean
    return out, mean


def fit(x: np.ndarray, y: np.ndarray, n_classes: int, c: float, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising C * sum(cross-entropy) + ||W||^2 / 2 over (x, y), in float64: W (n_classes, D), b
    (n_classes,).

    The features are centred first (their mean subtracted) and the bias moved back at the end (b - W mean): the
    bias is not penalised, so this is the same problem with the same minimum, but much better conditioned for
    L-BFGS, since a network's pooled features share a large common component (on the tests' stand-in network,
    centring reached the optimum in under a third of the iterations; uncentred, 100 iterations stopped 0.07
    short in probability). Memory: one float64 copy of `x` (centred in place)."""
    xc, mean = centred(x)
    w, b = fit_blocks([(xc, y)], n_classes, c, max_iter)
    return w, b - w @ mean


def fit_blocks(blocks: list[tuple[np.ndarray, np.ndarray]], n_classes: int, c: float,
               max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) as `fit`, over the rows of several blocks taken together, used as they are (no copy, no
    centring: centre them beforehand, all by the same vector): `blocks` [(x (n_i, D) float64 C-contiguous, a
    view is fine; y (n_i,) class indices)]. The loss is the sum of the blocks' summed cross-entropies, so this
    is the fit on their concatenation, without making it (cross-fitting: one matrix ordered by fold, each
    fold's training rows the two slices around it)."""
    import torch

    xs = [torch.from_numpy(np.ascontiguousarray(x, np.float64)) for x, _ in blocks]
    ys = [torch.from_numpy(np.asarray(y, np.int64)) for _, y in blocks]
    w = torch.zeros((n_classes, xs[0].shape[1]), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        ce = sum(torch.nn.functional.cross_entropy(xt @ w.T + b, yt, reduction="sum") for xt, yt in zip(xs, ys)
                 if len(yt))
        loss = c * ce + 0.5 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def predict_proba(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    z = np.asarray(x, np.float64) @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> float | None:
    if len(y) == 0:
        return None
    return float((predict_proba(x, w, b).argmax(1) == y).mean())


def choose_c(x_train, y_train, x_val, y_val, n_classes: int, max_iter: int, progress=None) -> dict:
    """Fits the head for each C of the grid and keeps the best on the validation split (C = 1 without one)."""
    if len(y_val) == 0:
        w, b = fit(x_train, y_train, n_classes, 1.0, max_iter)
        return {"C": 1.0, "w": w, "b": b, "tried": []}
    best, tried = None, []
    for c in GRID:
        w, b = fit(x_train, y_train, n_classes, c, max_iter)
        p = predict_proba(x_val, w, b)
        acc = float((p.argmax(1) == y_val).mean())
        loss = float(-np.log(np.clip(p[np.arange(len(y_val)), y_val], 1e-300, None)).mean())
        tried.append({"C": c, "val_accuracy": acc, "val_log_loss": loss})
        if best is None or (acc, -loss) > (best["acc"], -best["loss"]):
            best = {"C": c, "w": w, "b": b, "acc": acc, "loss": loss}
        if progress is not None:
            progress()
    return {"C": best["C"], "w": best["w"], "b": best["b"], "tried": tried}
