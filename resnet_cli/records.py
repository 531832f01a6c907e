"""The record types every output format is made of. Their dict forms are the JSON contract (docs/output.md).

success:   {"path", "arch", "weights", "preprocess": {"resize", "crop"}, "topk": [{"rank", "index", "label",
            "probability"}, ...]}
embedding: {"path", "arch", "weights", "embedding": [float, ...]}   (resnet-classify embed)
failure:   {"path", "error": {"type", "message"}}
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    rank: int
    index: int
    label: str
    probability: float

    def to_dict(self) -> dict:
        return {"rank": self.rank, "index": self.index, "label": self.label, "probability": self.probability}


@dataclass(frozen=True)
class Success:
    path: str
    arch: str
    weights: str
    resize: int
    crop: int
    topk: tuple[Prediction, ...]

    ok = True

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "arch": self.arch,
            "weights": self.weights,
            "preprocess": {"resize": self.resize, "crop": self.crop},
            "topk": [p.to_dict() for p in self.topk],
        }


@dataclass(frozen=True)
class Failure:
    path: str
    type: str
    message: str

    ok = False

    def to_dict(self) -> dict:
        return {"path": self.path, "error": {"type": self.type, "message": self.message}}


@dataclass(frozen=True, eq=False)
class Embedding:
    path: str
    arch: str
    weights: str
    vector: object  # a float32 numpy array (D,)

    ok = True

    def to_dict(self) -> dict:
        return {"path": self.path, "arch": self.arch, "weights": self.weights,
                "embedding": [float(v) for v in self.vector.tolist()]}


Record = Success | Failure | Embedding


def from_dict(d: dict) -> Record:
    """Parse a record written by any engine or an earlier run (used by --resume and the Ray engine)."""
    if "error" in d:
        return Failure(d["path"], d["error"]["type"], d["error"]["message"])
    pre = d.get("preprocess") or {}
    return Success(
        path=d["path"],
        arch=d["arch"],
        weights=d["weights"],
        resize=pre.get("resize", 0),
        crop=pre.get("crop", 0),
        topk=tuple(Prediction(p["rank"], p["index"], p["label"], p["probability"]) for p in d["topk"]),
    )
