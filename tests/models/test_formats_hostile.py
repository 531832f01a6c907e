"""Exported model files that are broken or hostile: each a one-line usage error naming the file, never a
traceback. The models are tiny graphs built with onnx.helper in the exported layout (input "input"; outputs
"logits" and "features"), so no network is exported here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from checkpoints import PHOTOS

CROP = 32


def metadata(**changes) -> dict:
    meta = {"arch": "resnet18", "labels": ["ant", "bee", "cat"],
            "preprocess": {"resize": 36, "crop": CROP, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "interpolation": "bilinear"}}
    meta.update(changes)
    return meta


def tiny_onnx(path, meta: dict | str | None = None, classes: int = 3, crop: int = CROP) -> None:
    """features = global average pool of the input (N, 3); logits = features @ W (N, classes)."""
    import onnx
    from onnx import TensorProto, helper

    w = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 10
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"]),
         helper.make_node("MatMul", ["features", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, crop, crop])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.tobytes(), raw=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "resnet_classify", meta if isinstance(meta, str) else json.dumps(meta)
    onnx.save_model(model, str(path))


def test_a_tiny_exported_graph_classifies_and_embeds(cli, tmp_path):
    """The fixture itself runs: the errors below are the files', not the harness's."""
    path = tmp_path / "tiny.onnx"
    tiny_onnx(path, metadata())
    res = cli(PHOTOS[0], "-w", path, "-f", "jsonl")
    assert res.code == 0, res.stderr
    (record,) = res.jsonl()
    assert record["arch"] == "resnet18" and record["weights"] == str(path)
    assert {t["label"] for t in record["topk"]} == {"ant", "bee", "cat"}
    res = cli("embed", PHOTOS[0], "-w", path, "-o", tmp_path / "v.npy")
    assert res.code == 0, res.stderr and np.load(tmp_path / "v.npy").shape == (1, 3)


def broken_files(tmp_path) -> dict:
    good = tmp_path / "good.onnx"
    tiny_onnx(good, metadata())
    data = good.read_bytes()
    cases = {}

    def case(name: str, expected: str, write) -> None:
        path = tmp_path / f"{name}.onnx"
        write(path)
        cases[name] = (path, expected)

    case("truncated", "not an ONNX model", lambda p: p.write_bytes(data[: len(data) // 2]))
    case("jpeg", "not an ONNX model", lambda p: p.write_bytes(PHOTOS[-1].read_bytes()))
    case("empty", "not an ONNX model", lambda p: p.write_bytes(b""))
    case("no_metadata", "no 'resnet_classify' metadata", lambda p: tiny_onnx(p, None))
    case("not_json", "is not JSON", lambda p: tiny_onnx(p, "{not json"))
    case("not_object", "is a list, not an object", lambda p: tiny_onnx(p, "[1, 2]"))
    case("labels", "metadata field 'labels' is not a list of strings", lambda p: tiny_onnx(p, metadata(labels=7)))
    case("arch", "metadata field 'arch' names no known architecture",
         lambda p: tiny_onnx(p, metadata(arch="vgg16")))
    case("crop", "metadata field 'preprocess.crop' is 99999",
         lambda p: tiny_onnx(p, metadata(preprocess={**metadata()["preprocess"], "crop": 99999})))
    case("std", "metadata field 'preprocess.std'",
         lambda p: tiny_onnx(p, metadata(preprocess={**metadata()["preprocess"], "std": [0, 1, 1]})))
    case("control", "metadata field 'arch' names no known architecture (\"\\u001b[31m",
         lambda p: tiny_onnx(p, metadata(arch="\x1b[31mred")))
    case("classes", "its graph gives 5 logits; its metadata names 3 classes", lambda p: tiny_onnx(p, metadata(),
                                                                                                classes=5))
    case("graph_crop", "its graph takes 48x48 images; its metadata says 32",
         lambda p: tiny_onnx(p, metadata(), crop=48))
    return cases


def test_broken_and_hostile_onnx_files_are_one_line_usage_errors(cli, tmp_path):
    for name, (path, expected) in broken_files(tmp_path).items():
        res = cli(PHOTOS[0], "-w", path)
        assert res.code == 2, (name, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"resnet-classify: error: model {path}"), (name, lines)
        assert expected in lines[0], (name, lines[0])
        assert "\x1b" not in res.stderr and "Traceback" not in res.stderr


def test_oversized_metadata_is_refused_before_it_is_parsed(cli, tmp_path, monkeypatch):
    from resnet_cli.models import resolve

    path = tmp_path / "big.onnx"
    tiny_onnx(path, metadata(padding="x" * 5000))
    monkeypatch.setattr(resolve, "MAX_METADATA_BYTES", 4096)  # the bound's code path, at a size a test can write
    res = cli(PHOTOS[0], "-w", path)
    assert res.code == 2 and "its metadata 'resnet_classify' is over" in res.stderr


def test_external_tensors_are_refused(cli, tmp_path):
    """An ONNX model may keep tensors in files it names: a file from elsewhere could read any file here."""
    import onnx

    path = tmp_path / "ext.onnx"
    tiny_onnx(path, metadata())
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    res = cli(PHOTOS[0], "-w", path)
    assert res.code == 2 and "its tensors are in external files" in res.stderr


def test_broken_openvino_files_are_one_line_usage_errors(cli, tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_text("<net name='x'><layers></net>")
    res = cli(PHOTOS[0], "-w", xml)
    assert res.code == 2 and f"model {xml}: its weights file {tmp_path / 'm.bin'} is missing" in res.stderr
    (tmp_path / "m.bin").write_bytes(b"\0" * 16)
    res = cli(PHOTOS[0], "-w", xml)
    assert res.code == 2 and "not an OpenVINO IR" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_a_missing_exported_file_is_a_usage_error(cli, tmp_path, suffix):
    res = cli(PHOTOS[0], "-w", tmp_path / f"none{suffix}")
    assert res.code == 2 and "no such file" in res.stderr
