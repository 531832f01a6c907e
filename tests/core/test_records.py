"""records.py: each record type's dict form is the schema docs/output.md and docs/cli.md document (keys, their
order, their types), and `from_dict` reads back what `to_dict` wrote (--resume and the Ray engine rely on it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resnet_cli.core.records import Embedding, Explanation, Failure, Prediction, Success, from_dict

PREDICTIONS = (Prediction(1, 339, "sorrel", float(np.float32(0.8734))),
               Prediction(2, 603, "horse cart", float(np.float32(0.0412))))


def success(**kw) -> Success:
    args = dict(path="photos/horse.jpg", arch="resnet50", weights="ResNet50_Weights.IMAGENET1K_V2", resize=232,
                crop=224, topk=PREDICTIONS)
    return Success(**{**args, **kw})


def test_a_success_is_the_documented_record_with_its_keys_in_order():
    d = success().to_dict()
    assert list(d) == ["path", "arch", "weights", "preprocess", "topk"]
    assert d == {"path": "photos/horse.jpg", "arch": "resnet50", "weights": "ResNet50_Weights.IMAGENET1K_V2",
                 "preprocess": {"resize": 232, "crop": 224},
                 "topk": [{"rank": 1, "index": 339, "label": "sorrel", "probability": PREDICTIONS[0].probability},
                          {"rank": 2, "index": 603, "label": "horse cart",
                           "probability": PREDICTIONS[1].probability}]}
    assert list(d["preprocess"]) == ["resize", "crop"]
    assert all(list(p) == ["rank", "index", "label", "probability"] for p in d["topk"])


def test_an_explained_success_adds_the_documented_explanation_and_nothing_of_the_map_itself():
    cam = np.zeros((4, 4), np.float32)
    exp = Explanation("gradcam", "layer4.2", 281, "tabby", 0.8123, cam=cam, overlay="explanations/cat.png")
    d = success(explanation=exp).to_dict()
    assert list(d) == ["path", "arch", "weights", "preprocess", "topk", "explanation"]
    assert d["explanation"] == {"method": "gradcam", "layer": "layer4.2",
                                "target": {"index": 281, "label": "tabby", "probability": 0.8123},
                                "overlay": "explanations/cat.png", "map": None}
    assert list(d["explanation"]) == ["method", "layer", "target", "overlay", "map"]
    json.dumps(d)  # the cam array and any picture stay out of the record


def test_a_failure_is_path_and_error_type_and_message():
    d = Failure("photos/broken.jpg", "truncated", "truncated image file").to_dict()
    assert d == {"path": "photos/broken.jpg", "error": {"type": "truncated", "message": "truncated image file"}}
    assert list(d["error"]) == ["type", "message"]


def test_an_embedding_is_path_arch_weights_and_its_float32_values_exactly():
    vector = np.array([0.1, -2.5, 3.3e-8, 1e30], np.float32)
    d = Embedding("a.jpg", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", vector).to_dict()
    assert list(d) == ["path", "arch", "weights", "embedding"]
    assert all(type(v) is float for v in d["embedding"])
    # through JSON and back to float32, every value is the same number, bit for bit
    back = np.array(json.loads(json.dumps(d))["embedding"], np.float32)
    assert back.tobytes() == vector.tobytes()


def test_ok_tells_successes_from_failures():
    assert success().ok and Embedding("a", "r", "w", np.zeros(2, np.float32)).ok
    assert not Failure("a", "corrupt", "x").ok


@pytest.mark.parametrize("record", [
    success(),
    success(path="odd \udcff name, \"quoted\".jpg", topk=PREDICTIONS[:1]),
    success(weights="checkpoints/best.pth", resize=7, crop=5),
    Failure("photos/broken.jpg", "truncated", "truncated image file"),
    Failure("https://example.com/x.jpg", "download_failed", "HTTP 404"),
], ids=["success", "odd-name", "checkpoint", "failure", "url-failure"])
def test_from_dict_reads_back_what_to_dict_wrote_through_json(record):
    line = json.dumps(record.to_dict())
    back = from_dict(json.loads(line))
    assert back == record
    assert type(back) is type(record)
    assert json.dumps(back.to_dict()) == line  # written again, the same bytes

