"""`similar`: nearest neighbours and near-duplicate groups in an embedding file, checked against a brute-force
cosine similarity computed here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from checkpoints import PHOTOS


@pytest.fixture(scope="module")
def index(tmp_path_factory, checkpoint):
    """An index of the sample photos and two augmented copies of each (mirrored, cropped): 18 vectors."""
    from resnet_cli.cli import run

    folder = tmp_path_factory.mktemp("family")
    for p in PHOTOS:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        img.save(folder / f"{p.stem}.jpg", quality=92)
        ImageOps.mirror(img).save(folder / f"{p.stem}~flip.jpg", quality=92)
        img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(folder / f"{p.stem}~crop.jpg", quality=92)
    out = folder.parent / "index.jsonl"
    assert run(["embed", str(folder), "-a", "resnet18", "-w", str(checkpoint("resnet18")), "-o", str(out),
                "-q"]) == 0
    return folder, out


def family(path: str) -> str:
    return path.rsplit("/", 1)[1].split("~")[0].split(".")[0]


def vectors(index_file):
    rows = [json.loads(line) for line in index_file.read_text().splitlines()]
    m = np.array([r["embedding"] for r in rows], np.float64)
    return [r["path"] for r in rows], m / np.linalg.norm(m, axis=1, keepdims=True)


def test_each_copy_finds_its_siblings(index, cli):
    folder, out = index
    paths, unit = vectors(out)
    res = cli("similar", *paths, "--index", out, "-k", "3", "-f", "jsonl")
    assert res.code == 0, res.stderr
    answers = res.jsonl()
    assert [a["query"] for a in answers] == paths
    sims = unit @ unit.T
    for i, a in enumerate(answers):
        found = [n["path"] for n in a["neighbours"]]
        assert paths[i] not in found  # not its own neighbour
        expected = [paths[j] for j in np.argsort(-sims[i], kind="stable") if j != i][:3]
        assert found == expected
        assert [n["similarity"] for n in a["neighbours"]] == pytest.approx(
            [sims[i, paths.index(p)] for p in found], abs=1e-6)
        # a stand-in backbone is no trained network, yet a copy's nearest vector is always a sibling's
        assert family(found[0]) == family(paths[i])


def test_an_image_query_is_embedded_with_the_index_model(index, cli):
    folder, out = index
    res = cli("similar", PHOTOS[1], "--index", out, "-k", "1", "-f", "jsonl")
    assert res.code == 0, res.stderr
    [answer] = res.jsonl()
    # the same photo, re-encoded as JPEG in the index, is the nearest and nearly identical
    assert family(answer["neighbours"][0]["path"]) == PHOTOS[1].stem
    assert answer["neighbours"][0]["similarity"] > 0.99


def test_duplicates_are_grouped_with_their_lowest_similarity(index, cli):
    folder, out = index
    paths, unit = vectors(out)
    sims = unit @ unit.T
    threshold = 0.975
    res = cli("similar", "--index", out, "--duplicates", "--threshold", str(threshold), "-f", "jsonl")
    assert res.code == 0, res.stderr
    groups = res.jsonl()
    # brute force: connected components of the "at least threshold" graph
    seen, expected = set(), []
    for i in range(len(paths)):
        if i in seen:
            continue
        comp, todo = {i}, [i]
        while todo:
            j = todo.pop()
            for m in np.nonzero(sims[j] >= threshold)[0].tolist():
                if m not in comp:
                    comp.add(m)
                    todo.append(m)
        seen |= comp
        if len(comp) > 1:
            members = sorted(comp)
            low = min(sims[a, b] for a in members for b in members if a < b)
            expected.append(([paths[m] for m in members], low))
    assert expected, "the test needs at least one group"
    assert [g["group"] for g in groups] == [e[0] for e in expected]
    assert [g["similarity"] for g in groups] == pytest.approx([e[1] for e in expected], abs=1e-6)


def test_usage_errors(index, cli, tmp_path):
    folder, out = index
    assert "give a QUERY" in cli("similar", "--index", out).stderr
    assert "give no QUERY" in cli("similar", "x.jpg", "--index", out, "--duplicates").stderr
    bad = tmp_path / "notes.jsonl"
    bad.write_text("hello\n")
    res = cli("similar", "x.jpg", "--index", bad)
    assert res.code == 2 and "not an embedding file" in res.stderr
