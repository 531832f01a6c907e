"""`similar` against hostile and awkward indexes: near-duplicate search in bounded memory, malformed index
files as one-line usage errors, and one file spelled two ways being one file."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tracemalloc

import numpy as np
import pytest

from checkpoints import PHOTOS


def write_npy(folder, vectors, paths=None, name="index"):
    index = folder / f"{name}.npy"
    np.save(index, np.asarray(vectors, np.float32))
    paths = paths if paths is not None else [f"photos/{i:05d}.jpg" for i in range(len(vectors))]
    (folder / f"{name}.paths.jsonl").write_text("".join(json.dumps({"row": i, "path": p}) + "\n"
                                                        for i, p in enumerate(paths)))
    return index


def usage_error(res) -> str:
    assert res.code == 2, (res.code, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("resnet-classify: error:"), res.stderr
    return lines[0]


# ---- --duplicates in bounded memory ----

def brute_force_groups(paths, vectors, threshold):
    """The groups as documented, from the whole similarity matrix and a plain union-find."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    sims = unit @ unit.T
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            if sims[i, j] >= threshold:
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(paths)):
        groups.setdefault(find(i), []).append(i)
    return [([paths[i] for i in m], min(sims[a, b] for a in m for b in m if a < b))
            for m in sorted((m for m in groups.values() if len(m) > 1), key=lambda m: m[0])]


def test_duplicates_memory_stays_flat_when_every_pair_is_similar(cli, tmp_path):
    # 3,000 near-identical vectors: 4.5 million similar pairs, one group. Holding the pairs took gigabytes.
    rng = np.random.default_rng(0)
    vectors = np.abs(rng.normal(size=64)) + rng.normal(scale=1e-3, size=(3000, 64))
    index = write_npy(tmp_path, vectors)
    tracemalloc.start()
    try:
        res = cli("similar", "--index", index, "--duplicates", "-f", "jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.code == 0, res.stderr
    [group] = res.jsonl()
    assert group["group"] == [f"photos/{i:05d}.jpg" for i in range(3000)]
    assert 0.95 <= group["similarity"] < 1.0
    assert peak < 64e6, f"peak {peak / 1e6:.0f} MB"


@pytest.mark.parametrize("rows,cols,sub", [(1024, 4096, 128), (16, 40, 4), (7, 13, 3)])
def test_duplicate_groups_across_tile_edges_equal_a_brute_force_search(monkeypatch, rows, cols, sub):
    from resnet_cli.analysis import neighbours
    from resnet_cli.cli.commands import similar

    monkeypatch.setattr(neighbours, "ROWS", rows)  # raising: the engine's tile sizes must exist to be tested
    monkeypatch.setattr(neighbours, "COLS", cols)
    monkeypatch.setattr(neighbours, "SUB", sub)
    rng = np.random.default_rng(1)
    base = rng.normal(size=(25, 24))
    vectors = np.concatenate([
        base[rng.integers(0, 25, 150)] + rng.normal(scale=0.12, size=(150, 24)),  # groups of near-copies
        rng.normal(size=(60, 24)),  # loners
        np.outer(np.ones(30), base[0]) + np.outer(np.linspace(0, 3, 30), rng.normal(size=24)),  # a chain
        np.zeros((2, 24)),  # zero vectors are similar to nothing
    ])[rng.permutation(242)].astype(np.float32)
    paths = [f"p{i}" for i in range(len(vectors))]
    got = list(similar.duplicate_groups(paths, similar._unit(vectors), 0.9))
    expected = brute_force_groups(paths, vectors, 0.9)
    assert len(expected) > 5 and max(len(g) for g, _ in expected) > 5
    assert [g["group"] for g in got] == [g for g, _ in expected]
    assert [g["similarity"] for g in got] == pytest.approx([s for _, s in expected], abs=1e-6)
    assert list(similar.duplicate_groups(paths, similar._unit(vectors), 1.01)) == []


# ---- malformed indexes: a usage error naming the file and the problem ----

@pytest.mark.parametrize("ext", [".parquet", ".npy", ".jsonl"])
def test_a_missing_index_says_it_does_not_exist(cli, tmp_path, ext):
    line = usage_error(cli("similar", "x.jpg", "--index", tmp_path / f"nothere{ext}"))
    assert f"nothere{ext}: no such file" in line


def test_an_npy_index_whose_paths_file_does_not_match(cli, tmp_path):
    index = write_npy(tmp_path, np.eye(5, 8), paths=["a.jpg", "b.jpg", "c.jpg"])
    line = usage_error(cli("similar", "a.jpg", "--index", index))
    assert "index.paths.jsonl names 3 rows" in line and "index.npy holds 5" in line
    index = write_npy(tmp_path, np.eye(2, 8), paths=["a.jpg", "b.jpg", "c.jpg"])
    assert "names 3 rows" in usage_error(cli("similar", "a.jpg", "--index", index))
    (tmp_path / "index.paths.jsonl").write_text('{"row": 0, "path": "a.jpg"}\n{"row": 5, "path": "b.jpg"}\n')
    assert "index.paths.jsonl, line 2" in usage_error(cli("similar", "a.jpg", "--index", index))
    (tmp_path / "index.paths.jsonl").unlink()
    assert "index.paths.jsonl: no such file" in usage_error(cli("similar", "a.jpg", "--index", index))


def test_an_index_of_another_dimension_is_refused_before_embedding(cli, tmp_path, checkpoint):
    index = write_npy(tmp_path, np.eye(3, 100), paths=["a.jpg", "b.jpg", "c.jpg"])
    line = usage_error(cli("similar", PHOTOS[0], "--index", index, "-a", "resnet18", "-w",
                           checkpoint("resnet18")))
    assert "index.npy" in line and "100 numbers" in line and "512" in line
    # a jsonl whose vectors change length, a parquet whose metadata and vectors disagree
    bad = tmp_path / "ragged.jsonl"
    bad.write_text(json.dumps({"path": "a.jpg", "arch": "resnet18", "weights": "w", "embedding": [1.0, 2.0]}) + "\n"
                   + json.dumps({"path": "b.jpg", "arch": "resnet18", "weights": "w", "embedding": [1.0]}) + "\n")
    line = usage_error(cli("similar", "a.jpg", "--index", bad))
    assert "ragged.jsonl, line 2" in line and "1 numbers" in line


def test_a_parquet_index_whose_dim_disagrees(cli, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("embedding", pa.list_(pa.float32(), 4)),
                        ("error_type", pa.string()), ("error_message", pa.string())],
                       metadata={"arch": "resnet18", "weights": "w", "dim": "512"})
    table = pa.Table.from_pylist([{"path": "a.jpg", "embedding": [1, 0, 0, 0]},
                                  {"path": "b.jpg", "embedding": [0, 1, 0, 0]}], schema=schema)
    pq.write_table(table, tmp_path / "idx.parquet")
    line = usage_error(cli("similar", "a.jpg", "--index", tmp_path / "idx.parquet"))
    assert "idx.parquet" in line and "dim 512" in line and "4 numbers" in line


def test_a_parquet_index_without_pyarrow_names_the_install(cli, tmp_path, monkeypatch):
    index = tmp_path / "idx.parquet"
    index.write_bytes(b"PAR1" + bytes(16) + b"PAR1")
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")] + ["pyarrow"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import pyarrow` fails, find_spec says None
    line = usage_error(cli("similar", "a.jpg", "--index", index))
    assert "idx.parquet" in line and "pyarrow" in line and "pip install" in line


def test_an_index_with_non_finite_numbers_or_foreign_content(cli, tmp_path):
    index = write_npy(tmp_path, [[1.0, 0.0], [np.nan, 1.0]], paths=["a.jpg", "b.jpg"])
    line = usage_error(cli("similar", "--index", index, "--duplicates"))
    assert "index.npy" in line and "b.jpg" in line and "not finite" in line
    np.save(tmp_path / "index.npy", np.arange(3.0))
    assert "not rows of vectors" in usage_error(cli("similar", "--index", index, "--duplicates"))
    (tmp_path / "notes.jsonl").write_text('{"path": "a.jpg", "embedding": ["x", "y"]}\n')
    assert "notes.jsonl, line 1" in usage_error(cli("similar", "--index", tmp_path / "notes.jsonl",
                                                    "--duplicates"))
    (tmp_path / "folder.npy").mkdir()
    assert "folder.npy: a folder" in usage_error(cli("similar", "--index", tmp_path / "folder.npy",
                                                     "--duplicates"))


@pytest.mark.timeout(30)
def test_an_index_that_is_a_fifo_is_refused_without_waiting(cli, tmp_path):
    fifo = tmp_path / "idx.jsonl"
    os.mkfifo(fifo)
    assert "idx.jsonl: not a regular file" in usage_error(cli("similar", "--index", fifo, "--duplicates"))


# ---- one file, two spellings ----

@pytest.fixture(scope="module")
def spelled(tmp_path_factory, checkpoint):
    """Photos embedded by relative names from their folder, an index.jsonl beside them, and other names
    for the same files: a hard link and a symlink elsewhere, and a different photo under the same name."""
    from resnet_cli.cli import run

    root = tmp_path_factory.mktemp("spelled")
    photos = root / "photos"
    photos.mkdir()
    for p in PHOTOS[:4]:
        shutil.copy(p, photos / p.name)
    names = sorted(p.name for p in photos.iterdir())
    cwd = os.getcwd()
    os.chdir(photos)
    try:
        assert run(["embed", *names, "-a", "resnet18", "-w", str(checkpoint("resnet18")), "-o",
                    str(root / "index.jsonl"), "-q"]) == 0
    finally:
        os.chdir(cwd)
    other = root / "other"
    other.mkdir()
    os.link(photos / names[0], other / "hard.png")
    os.symlink(photos / names[1], other / "soft.png")
    shutil.copy(photos / names[2], other / names[0])  # another file that has the first one's name
    return root, names


@pytest.mark.parametrize("spelling", ["./{0}", "{0}", "../photos/{0}", "{abs}", "{abs_dots}", "hard",
                                      "soft"])
def test_a_query_spelled_another_way_is_the_indexed_file(spelled, cli, monkeypatch, spelling):
    root, names = spelled
    monkeypatch.chdir(root / "photos")
    first = names[1] if spelling == "soft" else names[0]
    query = {"hard": str(root / "other" / "hard.png"), "soft": str(root / "other" / "soft.png")}.get(
        spelling, spelling.format(first, abs=str(root / "photos" / first),
                                  abs_dots=f"{root}/other/../photos//{first}"))
    # no model is named: a query recognised in the index needs none (an image to embed would)
    res = cli("similar", query, "--index", root / "index.jsonl", "-k", "10", "-f", "jsonl", "-w",
              root / "no-such-weights.pth")
    assert res.code == 0, res.stderr
    [answer] = res.jsonl()
    assert answer["query"] == query
    found = [n["path"] for n in answer["neighbours"]]
    assert first not in found  # never its own neighbour
    assert sorted(found) == sorted(set(names) - {first})


def test_a_folder_query_never_finds_each_photo_itself(spelled, cli, monkeypatch, checkpoint):
    root, names = spelled
    monkeypatch.chdir(root / "photos")
    res = cli("similar", ".", "--index", root / "index.jsonl", "-k", "10", "-f", "jsonl", "-a", "resnet18", "-w",
              checkpoint("resnet18"))
    assert res.code == 0, res.stderr
    answers = res.jsonl()
    assert len(answers) == len(names)
    for a in answers:
        own = os.path.basename(a["query"])
        assert own not in [n["path"] for n in a["neighbours"]]
        assert len(a["neighbours"]) == len(names) - 1


def test_another_file_with_the_same_name_is_not_the_indexed_one(spelled, cli, monkeypatch, checkpoint):
    root, names = spelled
    monkeypatch.chdir(root / "photos")
    query = f"../other/{names[0]}"  # the third photo's bytes under the first one's name
    res = cli("similar", query, "--index", root / "index.jsonl", "-k", "10", "-f", "jsonl", "-a", "resnet18",
              "-w", checkpoint("resnet18"))
    assert res.code == 0, res.stderr
    [answer] = res.jsonl()
    found = answer["neighbours"]
    assert sorted(n["path"] for n in found) == sorted(names)  # embedded: every indexed photo is a candidate
    assert found[0]["path"] == names[2] and found[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
