"""`export` and exported files: ONNX and OpenVINO models that give the original network's answers, checked at
export time (a broken export is refused and leaves nothing), and run by classify, evaluate and embed with the
same top-5 as the checkpoint they came from."""

from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest
from checkpoints import PHOTOS, SAMPLES


def top5(records: list[dict]) -> dict[str, list[int]]:
    return {os.path.basename(r["path"]): [t["index"] for t in r["topk"]] for r in records}


def probabilities(records: list[dict]) -> np.ndarray:
    return np.array([[t["probability"] for t in r["topk"]] for r in records])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint):
    """The seeded resnet18 checkpoint exported to both formats (one export each for the whole module), and the
    export reports."""
    from resnet_cli.cli import run

    folder = tmp_path_factory.mktemp("exported")
    ckpt = checkpoint("resnet18")
    files = {"onnx": folder / "r18.onnx", "openvino": folder / "r18.xml"}
    reports = {}
    for fmt, path in files.items():
        report = folder / f"{fmt}.json"
        with open(report, "w") as out, pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdout", out)
            assert run(["export", "--weights", str(ckpt), "-o", str(path)]) == 0
        reports[fmt] = json.loads(report.read_text())
    return ckpt, files, reports


@pytest.mark.timeout(300)
def test_export_writes_both_formats_with_metadata_and_a_passed_parity_check(exported):
    ckpt, files, reports = exported
    assert sorted(os.listdir(files["onnx"].parent)) == ["onnx.json", "openvino.json", "r18.bin", "r18.onnx",
                                                         "r18.xml"]
    for report in reports.values():
        p = report["parity"]
        # each photo alone, all together, and classify's own CPU chunk of 8 (the photos repeated to fill it)
        assert p["images"] == len(PHOTOS) and p["batches"] == [1, len(PHOTOS), 8] and p["top5_identical"]
        assert p["max_prob_diff"] <= p["tolerance"]["probability"] == 1e-4
        assert report["arch"] == "resnet18" and report["weights"] == str(ckpt)
    from resnet_cli.models.resolve import resolve

    for fmt, path in files.items():
        r = resolve(None, str(path))  # no --arch: the file's metadata says
        assert (r.arch.name, r.runtime, r.name, r.preprocess.crop, r.preprocess.resize) == (
            "resnet18", fmt, str(path), 224, 256)
        assert len(r.labels) == 1000 and r.labels[0] == "tench"


@pytest.mark.timeout(300)
def test_the_onnx_file_has_a_dynamic_batch_axis_that_works(exported):
    import onnxruntime as ort

    _, files, _ = exported
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    x = np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32)
    five = session.run(None, {"input": x})
    one = [session.run(None, {"input": x[i:i + 1]}) for i in range(5)]
    assert five[0].shape == (5, 1000) and five[1].shape == (5, 512)
    assert np.abs(np.concatenate([o[0] for o in one]) - five[0]).max() < 1e-4


@pytest.mark.timeout(300)
def test_classify_on_the_exported_files_gives_the_checkpoints_top5(exported, cli):
    ckpt, files, _ = exported
    base = cli(SAMPLES, "-w", ckpt, "-f", "jsonl")
    assert base.code == 0, base.stderr
    for fmt, path in files.items():
        res = cli(SAMPLES, "-w", path, "-f", "jsonl")
        assert res.code == 0, res.stderr
        records = res.jsonl()
        assert top5(records) == top5(base.jsonl())
        assert np.abs(probabilities(records) - probabilities(base.jsonl())).max() < 1e-4
        assert {(r["weights"], r["arch"]) for r in records} == {(str(path), "resnet18")}
        # The same answer whatever the batch: one photo alone, as in the run of all six
        alone = cli(PHOTOS[0], "-w", path, "-f", "jsonl").jsonl()
        assert alone[0]["topk"] == records[0]["topk"]


@pytest.mark.timeout(300)
def test_evaluate_ranks_the_checkpoint_and_its_exports_side_by_side(exported, cli, tmp_path):
    ckpt, files, _ = exported
    base = {os.path.basename(r["path"]): r["topk"][0]["label"] for r in cli(SAMPLES, "-w", ckpt, "-f",
                                                                             "jsonl").jsonl()}
    data = tmp_path / "data"
    for photo in PHOTOS:  # each photo filed under the checkpoint's own top-1: accuracy 100% for an exact export
        folder = data / base[photo.name].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    res = cli("evaluate", data, "-w", f"{ckpt},{files['onnx']},{files['openvino']}", "-f", "json")
    assert res.code == 0, res.stderr
    rows = json.loads(res.text)
    rows = rows["models"] if isinstance(rows, dict) else rows
    assert [r["weights"] for r in rows] == [str(ckpt), str(files["onnx"]), str(files["openvino"])]
    assert [r["top1"] for r in rows] == [1.0, 1.0, 1.0]


@pytest.mark.timeout(300)
def test_embed_on_the_exported_files_gives_the_checkpoints_features(exported, cli, tmp_path):
    ckpt, files, _ = exported
    assert cli("embed", SAMPLES, "-w", ckpt, "-o", tmp_path / "base.npy").code == 0
    base = np.load(tmp_path / "base.npy")
    for fmt, path in files.items():
        res = cli("embed", SAMPLES, "-w", path, "-o", tmp_path / f"{fmt}.npy")
        assert res.code == 0, res.stderr
        vectors = np.load(tmp_path / f"{fmt}.npy")
        assert vectors.shape == base.shape == (len(PHOTOS), 512)
        assert np.abs(vectors - base).max() <= 1e-4 * np.abs(base).max()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_a_broken_export_is_refused_and_leaves_nothing(fmt, checkpoint, cli, tmp_path, monkeypatch):
    import torch

    from resnet_cli.models import export

    real = export.to_onnx

    def broken(module, *args, **kwargs):
        module = copy.deepcopy(module)
        with torch.no_grad():
            module.layer4[-1].conv2.weight.mul_(1.05)  # a 5% error in one late layer
        return real(module, *args, **kwargs)

    monkeypatch.setattr(export, "to_onnx", broken)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.xml")
    if fmt == "openvino":
        out.write_text("old")  # a file already at -o stays as it was
    res = cli("export", "-w", checkpoint("resnet18"), "-o", out, "--crop", "64")
    assert res.code == 2
    assert "export refused, nothing written: the parity check failed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # No model, no .bin, no temporary file
    assert os.listdir(tmp_path) == ([] if fmt == "onnx" else [out.name])
    assert fmt == "onnx" or out.read_text() == "old"


def lose_on_the_way(monkeypatch, what: str) -> None:
    """Make the metadata written into the file differ from the model's: two labels swapped, or the mean."""
    from resnet_cli.models import export

    real = export.metadata

    def wrong(*args, **kwargs):
        meta = real(*args, **kwargs)
        if what == "labels":
            meta["labels"][0], meta["labels"][1] = meta["labels"][1], meta["labels"][0]
        else:
            meta["preprocess"]["mean"] = [0.5, 0.5, 0.5]
        return meta

    monkeypatch.setattr(export, "metadata", wrong)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt, what", [("onnx", "labels"), ("onnx", "mean"), ("openvino", "mean")])
def test_metadata_lost_on_the_way_is_refused_and_leaves_nothing(fmt, what, checkpoint, cli, tmp_path, monkeypatch):
    """The file's metadata is read back as --weights FILE reads it: labels or preprocessing that differ from
    the model's (the network itself exported right) refuse the export."""
    lose_on_the_way(monkeypatch, what)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.xml")
    res = cli("export", "-w", checkpoint("resnet18"), "-o", out, "--crop", "64")
    assert res.code == 2 and res.stdout == b""
    assert "export refused, nothing written: the metadata read back from the file gives other" in res.stderr
    assert ("labels" if what == "labels" else "mean: (0.5, 0.5, 0.5) against (0.485") in res.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(120)
def test_the_parity_check_runs_the_file_with_the_preprocessing_read_back_from_it(checkpoint, tmp_path):
    """A file whose mean/std were wrong would be run with them by classify: so the check runs it so."""
    import dataclasses

    import torch

    from resnet_cli.models import export, model, registry, state_dicts
    from resnet_cli.models.formats import ExportedModel

    pre = registry.Preprocess(73, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    net = model.build(registry.get_arch("resnet18"), device="cpu")
    net.load_state_dict(state_dicts.read_state_dict(checkpoint("resnet18")))
    net.eval()
    path = tmp_path / "m.onnx"
    export.to_onnx(net, 64, str(path), {})
    batch = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    exported = ExportedModel("onnx", (path.read_bytes(),), str(path), 1000)
    names = ["a", "b", "c"]
    assert export.check_parity(net, exported, batch, pre, names, pre).ok
    wrong = dataclasses.replace(pre, mean=(0.5, 0.5, 0.5))
    parity = export.check_parity(net, exported, batch, pre, names, wrong)
    assert not parity.ok and parity.max_logit_diff > 1e-3


@pytest.mark.timeout(300)
def test_a_trained_model_exports_with_its_classes_and_classifies_alike(checkpoint, cli, tmp_path):
    import torch

    from resnet_cli.cli.commands.train import save
    from resnet_cli.models.resolve import resolve

    # A model as train writes it (its own save): the checkpoint's network with a 3-class head, and metadata.
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 512, generator=g).numpy() * 0.5
    b = np.zeros(3, np.float32)
    trained = tmp_path / "trained.safetensors"
    save(str(trained), resolve("resnet18", str(checkpoint("resnet18")), crop=96), ["ant", "bee", "cat"], w, b,
         offline=True, quiet=True)
    out = tmp_path / "trained.onnx"
    check = tmp_path / "check"  # --check DIR: the user's own photos, here two of them
    check.mkdir()
    for photo in PHOTOS[:2]:
        shutil.copy(photo, check / photo.name)
    res = cli("export", "-w", trained, "-o", out, "--check", check)
    assert res.code == 0, res.stderr
    report = json.loads(res.text)
    assert report["arch"] == "resnet18" and report["parity"]["batches"] == [1, 2, 8]
    assert report["parity"]["photos"] == str(check)
    base = cli(SAMPLES, "-w", trained, "-f", "jsonl").jsonl()
    records = cli(SAMPLES, "-w", out, "-f", "jsonl").jsonl()
    assert [[t["label"] for t in r["topk"]] for r in records] == [[t["label"] for t in r["topk"]] for r in base]
    assert {r["preprocess"]["crop"] for r in records} == {96}


def test_exported_files_refuse_what_their_runtime_does_not_do(exported, cli):
    _, files, _ = exported
    path = files["onnx"]
    res = cli(PHOTOS[0], "-w", path, "--precision", "bf16")
    assert res.code == 2 and "--precision applies to torch checkpoints only" in res.stderr
    res = cli(PHOTOS[0], "-w", path, "--device", "cuda")
    assert res.code == 2 and "give --device cpu" in res.stderr
    res = cli("explain", PHOTOS[0], "-w", path)
    assert res.code == 2 and "explain needs the torch network" in res.stderr
    res = cli(PHOTOS[0], "-w", path, "--crop", "200")
    assert res.code == 2 and "exported for 224-pixel crops" in res.stderr
    res = cli(PHOTOS[0], "-w", path, "--resize", "300", "-f", "jsonl")  # the resize may change, the crop stays
    assert res.code == 0, res.stderr
    assert res.jsonl()[0]["preprocess"] == {"resize": 300, "crop": 224}
    res = cli("export", "-w", path, "-o", path.parent / "again.onnx")
    assert res.code == 2 and "already an exported model" in res.stderr


def test_export_checks_its_output_before_any_work(checkpoint, cli, tmp_path):
    ckpt = checkpoint("resnet18")
    res = cli("export", "-w", ckpt, "-o", tmp_path / "m.pth")
    assert res.code == 2 and "give a .onnx or .xml file name" in res.stderr
    res = cli("export", "-w", ckpt, "-o", tmp_path / "m.onnx", "--format", "openvino")
    assert res.code == 2 and "written as a .xml file" in res.stderr
    res = cli("export", "-w", ckpt, "-o", tmp_path / "missing" / "m.onnx")
    assert res.code == 2 and "does not exist" in res.stderr
    res = cli("export", "-w", ckpt, "-o", tmp_path / "m.onnx", "--opset", "7")
    assert res.code == 2 and "--opset must be from 18 to 23" in res.stderr
    (tmp_path / "empty").mkdir()
    res = cli("export", "-w", ckpt, "-o", tmp_path / "m.onnx", "--check", tmp_path / "empty")
    assert res.code == 2 and "no image files in it" in res.stderr
    os.rmdir(tmp_path / "empty")
    # photos in class folders (DATA/<class>/*.jpg, as train, evaluate and audit read them) are photos too
    from resnet_cli.cli.commands.export import _check_sources

    (tmp_path / "classes" / "a").mkdir(parents=True)
    shutil.copy(PHOTOS[0], tmp_path / "classes" / "a" / "x.jpg")
    shutil.copy(PHOTOS[1], tmp_path / "classes" / "top.jpg")
    assert [s.path for s in _check_sources(str(tmp_path / "classes"))] == [
        str(tmp_path / "classes" / "a" / "x.jpg"), str(tmp_path / "classes" / "top.jpg")]
    shutil.rmtree(tmp_path / "classes")
    # The .bin beside an .xml is a name the tool chose: a symlink there is not followed, nor written through
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / "m.bin")
    res = cli("export", "-w", ckpt, "-o", tmp_path / "m.xml", "--crop", "32")
    assert res.code == 2 and "m.bin" in res.stderr
    assert victim.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["m.bin", "victim"]


@pytest.mark.timeout(300)
def test_grouped_bottleneck_blocks_export_and_classify_alike(checkpoint, cli, tmp_path):
    """ResNeXt's grouped bottleneck blocks, beside resnet18's basic blocks above: the registry's architectures
    are basic blocks or bottlenecks (grouped or not, wider or not) at other depths, and a grouped bottleneck
    exercises everything a plain one does. At a 64-pixel crop to stay cheap; benchmarks/export_sizes.py exports
    every architecture of the registry at 224 to both formats, parity check included."""
    arch = "resnext50_32x4d"
    ckpt = checkpoint(arch)
    out = tmp_path / f"{arch}.onnx"
    res = cli("export", "-w", ckpt, "-o", out, "--crop", "64")
    assert res.code == 0, res.stderr
    assert json.loads(res.text)["parity"]["top5_identical"]
    base = cli(SAMPLES, "-w", ckpt, "--crop", "64", "-f", "jsonl").jsonl()
    records = cli(SAMPLES, "-w", out, "-f", "jsonl").jsonl()
    assert top5(records) == top5(base) and {r["arch"] for r in records} == {arch}
