"""`export --int8`: post-training quantization of a model `train` made (a head fitted to the sample photos: real
margins, so agreement means something), checked on held-out photos, refused below --min-agreement with advice,
and run by classify as the file it wrote."""

from __future__ import annotations

import json
import random

import pytest
from checkpoints import PHOTOS, augment
from PIL import Image


@pytest.fixture(scope="module")
def trained(tmp_path_factory, checkpoint):
    """(model.safetensors made by `train`, calibration folder, held-out folder): augmented copies of the sample
    photos, one class a photo; the three sets apart."""
    from resnet_cli.cli import run

    rng = random.Random(3)
    root = tmp_path_factory.mktemp("int8")
    counts = {"train": 4, "calibrate": 2, "check": 4}
    for photo in PHOTOS:
        img = Image.open(photo).convert("RGB")
        for split, n in counts.items():
            for i in range(n):
                folder = root / split / photo.stem if split == "train" else root / split
                folder.mkdir(parents=True, exist_ok=True)
                augment(img, rng).save(folder / f"{photo.stem}-{i}.jpg", quality=90)
    black = root / "black"
    black.mkdir()
    Image.new("RGB", (64, 64)).save(black / "0.png")
    model = root / "model.safetensors"
    assert run(["train", str(root / "train"), "-a", "resnet18", "-w", str(checkpoint("resnet18")), "-o", str(model),
                "-q", "-f", "json"]) == 0
    return model, root / "calibrate", root / "check", black


@pytest.mark.timeout(300)
def test_int8_openvino_export_reports_agreement_and_classify_gives_it(trained, cli, tmp_path):
    model, calibrate, check, _ = trained
    out = tmp_path / "m8.xml"
    res = cli("export", "-w", model, "-o", out, "--int8", "--calibrate", calibrate, "--check", check)
    assert res.code == 0, res.stderr
    report = json.loads(res.stdout)
    a = report["agreement"]
    assert (report["precision"], report["format"], a["images"]) == ("int8", "openvino", len(list(check.iterdir())))
    assert a["top1"] >= 0.98 and report["min_agreement"] == 0.98  # real margins keep their answers
    assert out.is_file() and out.with_suffix(".bin").stat().st_size < model.stat().st_size / 2  # int8 weights
    # classify runs the file; its top-1 agrees with the float model's exactly as the report says
    photos = sorted(check.iterdir())
    fp32 = cli(*photos, "-w", model, "-f", "jsonl").jsonl()
    int8 = cli(*photos, "-w", out, "-f", "jsonl")
    assert int8.code == 0, int8.stderr
    int8 = int8.jsonl()
    assert {r["weights"] for r in int8} == {str(out)}
    same = [x["topk"][0]["index"] == y["topk"][0]["index"] for x, y in zip(fp32, int8)]
    assert sum(same) / len(same) == a["top1"]


@pytest.mark.timeout(300)
def test_int8_below_min_agreement_is_refused_with_advice_and_leaves_no_file(trained, cli, tmp_path):
    """Calibrated on one black image, the activation ranges are wrong: the agreement falls, the model is
    refused and nothing is written, and the refusal measures which layers kept in fp32 bring it back."""
    model, _, check, black = trained
    out = tmp_path / "m8.onnx"
    res = cli("export", "-w", model, "-o", out, "--int8", "--calibrate", black, "--check", check,
              "--min-agreement", "0.9")
    assert res.code == 2 and res.stdout == b""
    assert "int8 export refused, nothing written: top-1 agreement with fp32 is" in res.stderr
    assert "--keep-fp32 conv1,fc" in res.stderr  # the stem and the head, measured to bring it over 0.9
    assert list(tmp_path.iterdir()) == []  # no model, no temporary folder
    # following the advice writes the model, and the report says what stayed in fp32
    res = cli("export", "-w", model, "-o", out, "--int8", "--calibrate", black, "--check", check,
              "--min-agreement", "0.9", "--keep-fp32", "conv1,fc")
    assert res.code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["kept_fp32"] == ["conv1", "fc"] and report["agreement"]["top1"] >= 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["m8.onnx"]


@pytest.mark.parametrize("argv, message", [
    (["--int8"], "--int8 needs --calibrate DIR"),
    (["--calibrate", "."], "go with --int8"),
    (["--int8", "--calibrate", ".", "--min-agreement", "1.5"], "--min-agreement must be from 0 to 1"),
    (["--int8", "--calibrate", "CAL", "--keep-fp32", "layer9"], "--keep-fp32 layer9: no layer of that name"),
])
def test_int8_options_are_checked(argv, message, trained, cli, tmp_path):
    model, calibrate, check, _ = trained
    argv = [str(calibrate) if a == "CAL" else a for a in argv]
    res = cli("export", "-w", model, "-o", tmp_path / "m.onnx", "--check", check, *argv)
    assert res.code == 2 and message in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def apart(tmp_path):
    """(calibration folder, check folder): three sample photos each, no photo in common."""
    import shutil

    folders = tmp_path / "calibrate", tmp_path / "check"
    for i, folder in enumerate(folders):
        folder.mkdir()
        for photo in PHOTOS[i::2]:
            shutil.copy(photo, folder / photo.name)
    return folders


def test_int8_check_photos_must_be_held_out_from_the_calibration_photos(apart, checkpoint, cli, tmp_path):
    import shutil

    calibrate, check = apart
    out = tmp_path / "out"
    out.mkdir()
    base = ["export", "-w", checkpoint("resnet18"), "-o", out / "m.onnx", "--int8", "--crop", "64"]
    res = cli(*base, "--calibrate", calibrate)  # no --check: the sample photos could be the calibration photos
    assert res.code == 2 and "--int8 needs --check DIR" in res.stderr, res.stderr
    res = cli(*base, "--calibrate", calibrate, "--check", calibrate)
    assert res.code == 2 and f"--check {calibrate} and --calibrate {calibrate} are the same folder" in res.stderr
    shutil.copy(calibrate / PHOTOS[0].name, check / "renamed.jpg")  # the same photo under another name
    res = cli(*base, "--calibrate", calibrate, "--check", check)
    assert res.code == 2 and f"--check {check} and --calibrate {calibrate} share 1 photo" in res.stderr
    assert "renamed.jpg" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


@pytest.mark.timeout(300)
@pytest.mark.parametrize("what", ["labels", "mean"])
def test_int8_metadata_lost_on_the_way_is_refused(what, apart, checkpoint, cli, tmp_path, monkeypatch):
    from test_export import lose_on_the_way

    calibrate, check = apart
    lose_on_the_way(monkeypatch, what)
    out = tmp_path / "out"
    out.mkdir()
    res = cli("export", "-w", checkpoint("resnet18"), "-o", out / "m.onnx", "--int8", "--crop", "64",
              "--calibrate", calibrate, "--check", check, "--min-agreement", "0")
    assert res.code == 2 and res.stdout == b""
    assert "export refused, nothing written: the metadata read back from the file gives other" in res.stderr
    assert list(out.iterdir()) == []


def weight_is_quantized(op) -> bool:
    """Whether the weights input (port 1) of an OpenVINO Convolution/MatMul comes through a FakeQuantize or
    from an integer constant (NNCF's compressed int8 weights), looking up the constant's path."""
    seen, stack = set(), [op.input_value(1).get_node()]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            if node.get_element_type().is_integral():
                return True
            continue
        if kind in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"):
            stack += [v.get_node() for v in node.input_values()]
    return False


@pytest.mark.timeout(300)
def test_int8_openvino_keeps_the_named_layers_in_fp32_with_the_openvino_extra_alone(apart, checkpoint, cli, tmp_path,
                                                                                    monkeypatch):
    """--keep-fp32 conv1,fc: in the IR the stem conv and the head's MatMul (which the converter renames) take
    float weights while the other convolutions are int8; and an install without ONNX Runtime makes it."""
    import sys

    import openvino as ov

    calibrate, check = apart
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the [openvino] extra has no ONNX Runtime
    out = tmp_path / "m8.xml"
    res = cli("export", "-w", checkpoint("resnet18"), "-o", out, "--int8", "--crop", "64", "--calibrate", calibrate,
              "--check", check, "--min-agreement", "0", "--keep-fp32", "conv1,fc")
    assert res.code == 0, res.stderr
    ops = ov.Core().read_model(str(out)).get_ordered_ops()
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    matmuls = [op for op in ops if op.get_type_name() == "MatMul"]
    assert len(convs) == 20 and len(matmuls) == 1  # resnet18: 17 convs and 3 downsampling ones; fc
    assert not weight_is_quantized(convs[0]) and not weight_is_quantized(matmuls[0])  # conv1, fc: fp32
    assert all(weight_is_quantized(op) for op in convs[1:])  # the rest: int8


@pytest.mark.parametrize("out, missing, extra", [("m.xml", "nncf", "openvino"), ("m.xml", "onnx", "openvino"),
                                                 ("m.onnx", "onnxscript", "onnx")])
def test_int8_without_a_package_it_needs_names_the_extra(out, missing, extra, apart, checkpoint, cli, tmp_path,
                                                          monkeypatch):
    import sys

    calibrate, check = apart
    monkeypatch.setitem(sys.modules, missing, None)
    res = cli("export", "-w", checkpoint("resnet18"), "-o", tmp_path / out, "--int8", "--crop", "64",
              "--calibrate", calibrate, "--check", check)
    assert res.code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"needs the {missing} package: pip install 'resnet-classify[{extra}]'" in res.stderr
    assert not (tmp_path / out).exists()
