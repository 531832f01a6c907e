"""`embed`: the vector the head receives equals torchvision's model with `fc = Identity` on
`weights.transforms()`, in every file format, with failures as records."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from checkpoints import PHOTOS


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    for p in PHOTOS:
        shutil.copy(p, d / p.name)
    (d / "broken.jpg").write_bytes((d / "rocket.jpg").read_bytes()[:500])
    return d


def torchvision_features(arch: str, ckpt, paths) -> np.ndarray:
    import torch
    import torchvision

    model = torchvision.models.get_model(arch)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval()
    tf = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    with torch.no_grad():
        return model(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])).numpy()


def read(path):
    from resnet_cli.outputs.embeddings import read as read_embeddings

    return read_embeddings(str(path))


@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_embeddings_equal_torchvision_without_its_head_in_every_format(folder, checkpoint, cli, tmp_path, arch,
                                                                        dim):
    ckpt = checkpoint(arch)
    images = sorted(p for p in folder.iterdir() if p.name != "broken.jpg")
    expected = torchvision_features(arch, ckpt, images)
    assert expected.shape == (len(images), dim)
    for ext in ("jsonl", "parquet", "npy"):
        out = tmp_path / f"vectors.{ext}"
        res = cli("embed", folder, "-a", arch, "-w", ckpt, "-o", out)
        assert res.code == 1, res.stderr  # the broken file
        assert f"{folder / 'broken.jpg'}: truncated" in res.stderr
        paths, matrix, _ = read(out)
        assert paths == [str(p) for p in images]
        assert matrix.dtype == np.float32 and matrix.shape == expected.shape
        relative = np.abs(matrix - expected).max() / np.abs(expected).max()
        assert relative < 1e-4, (ext, relative)


def test_failures_are_records_in_their_place_and_normalize_gives_unit_vectors(folder, checkpoint, cli, tmp_path):
    out = tmp_path / "v.jsonl"
    res = cli("embed", folder, "-a", "resnet18", "-w", checkpoint("resnet18"), "-o", out, "--normalize")
    assert res.code == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    names = sorted(p.name for p in folder.iterdir())
    assert [line["path"].rsplit("/", 1)[1] for line in lines] == names
    broken = lines[names.index("broken.jpg")]
    assert broken == {"path": str(folder / "broken.jpg"), "error": {"type": "truncated",
                                                                    "message": broken["error"]["message"]}}
    vectors = np.array([line["embedding"] for line in lines if "embedding" in line])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert {line["arch"] for line in lines if "arch" in line} == {"resnet18"}


def test_parquet_keeps_failures_as_rows_and_npy_names_its_rows(folder, checkpoint, cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ckpt = checkpoint("resnet18")
    cli("embed", folder, "-a", "resnet18", "-w", ckpt, "-o", tmp_path / "v.parquet")
    table = pq.read_table(tmp_path / "v.parquet")
    assert table.column_names == ["path", "embedding", "error_type", "error_message"]
    kind = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 512 and kind.value_type == pa.float32()
    rows = table.to_pylist()
    assert [r["error_type"] for r in rows if r["embedding"] is None] == ["truncated"]
    assert table.schema.metadata[b"arch"] == b"resnet18"
    cli("embed", folder, "-a", "resnet18", "-w", ckpt, "-o", tmp_path / "v.npy")
    sidecar = [json.loads(line) for line in (tmp_path / "v.paths.jsonl").read_text().splitlines()]
    assert [s["row"] for s in sidecar] == list(range(len(PHOTOS)))
    assert np.load(tmp_path / "v.npy").shape == (len(PHOTOS), 512)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy", "v.parquet", "v.paths.jsonl"]  # no leftovers


def test_an_unknown_extension_is_a_usage_error_before_any_work(cli, tmp_path):
    res = cli("embed", PHOTOS[0], "-o", tmp_path / "v.csv")
    assert res.code == 2 and ".jsonl, .parquet or .npy" in res.stderr


@pytest.mark.ray
@pytest.mark.timeout(300, method="thread")  # a hung Ray call ignores SIGALRM
def test_ray_engine_writes_the_same_vectors(folder, checkpoint, cli, tmp_path):
    ckpt = checkpoint("resnet18")
    cli("embed", folder, "-a", "resnet18", "-w", ckpt, "-o", tmp_path / "local.jsonl")
    res = cli("embed", folder, "-a", "resnet18", "-w", ckpt, "-o", tmp_path / "ray.jsonl", "--engine", "ray",
              "--workers", "2", "-b", "2")
    assert res.code == 1, res.stderr
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
