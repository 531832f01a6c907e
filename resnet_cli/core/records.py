"""The record types every output format is made of. Their dict forms are the JSON contract (docs/output.md).

success:   {"path", "arch", "weights", "preprocess": {"resize", "crop"}, "topk": [{"rank", "index", "label",
            "probability"}, ...]}
           explain adds "explanation": {"method", "layer", "target": {"index", "label", "probability"},
            "overlay", "map"}
embedding: {"path", "arch", "weights", "embedding": [float, ...]}   (resnet-classify embed)
failure:   {"path", "error": {"type", "message"}}
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prediction:
    rank: int
    index: int
    label: str
    probability: float

    def to_dict(self) -> dict:
        return {"rank": self.rank, "index": self.index, "label": self.label, "probability": self.probability}


@dataclass(frozen=True, eq=False)
class View:
    """The picture as the user knows it (orientation applied, RGB), downscaled to at most the size asked for on
    its longer side, and where the center crop the network saw lies in it: (left, top, right, bottom) in the
    view's pixels, reaching past its edges where the crop was padded. For overlays and report thumbnails."""

    image: object  # PIL.Image.Image
    box: tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)
class Explanation:
    """explain's addition to a success: the class explained and its map; `overlay` and `map` are the files
    written from it (filled in by the command)."""

    method: str
    layer: str
    index: int
    label: str
    probability: float
    cam: object = field(default=None, repr=False)  # (crop, crop) float32 numpy array in [0, 1]
    overlay: str | None = None
    map: str | None = None
    picture: object = field(default=None, repr=False)  # the overlay drawn (PIL), for a report

    def to_dict(self) -> dict:
        return {"method": self.method, "layer": self.layer,
                "target": {"index": self.index, "label": self.label, "probability": self.probability},
                "overlay": self.overlay, "map": self.map}


@dataclass(frozen=True)
class Success:
    path: str
    arch: str
    weights: str
    resize: int
    crop: int
    topk: tuple[Prediction, ...]
    explanation: Explanation | None = field(default=None, compare=False)
    view: View | None = field(default=None, compare=False, repr=False)  # kept for an overlay or a report

    ok = True

    def to_dict(self) -> dict:
        d = {
            "path": self.path,
            "arch": self.arch,
            "weights": self.weights,
            "preprocess": {"resize": self.resize, "crop": self.crop},
            "topk": [p.to_dict() for p in self.topk],
        }
        if self.explanation is not None:
            d["explanation"] = self.explanation.to_dict()
        return d


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

    def normalized(self) -> "Embedding":
        """This embedding scaled to unit length (L2; the norm summed in float64, the vector kept float32), as
        `embed --normalize` writes it. An all-zero vector stays as it is."""
        norm = float((self.vector.astype("float64") ** 2).sum() ** 0.5)
        return Embedding(self.path, self.arch, self.weights,
                         (self.vector / norm if norm else self.vector).astype("float32"))


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
