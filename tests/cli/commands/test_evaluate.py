"""`evaluate` against independent oracles: torchvision's model with `weights.transforms()` for the
predictions, scikit-learn for precision/recall/F1 and the confusion matrix, scipy for the Wilson intervals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from checkpoints import PHOTOS
from resnet_cli.models import registry

TOL = 1e-9


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """The sample photos and augmented copies: mirrored, cropped, recoloured, rescaled (24 images)."""
    folder = tmp_path_factory.mktemp("augmented")
    out = []
    for p in PHOTOS:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        variants = {
            "orig": img,
            "flip": ImageOps.mirror(img),
            "crop": img.crop((w // 8, h // 8, w - w // 10, h - h // 12)),
            "tone": ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.25)).enhance(0.6).resize(
                (w * 2 // 3, h * 2 // 3)),
        }
        for name, v in variants.items():
            path = folder / f"{p.stem}_{name}.jpg"
            v.save(path, quality=92)
            out.append(path)
    return out


@pytest.fixture(scope="module")
def reference(images, checkpoint):
    """torchvision's logits for every image: resnet18 with the seeded checkpoint and weights.transforms()."""
    import torch
    import torchvision

    ckpt = checkpoint("resnet18")
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tf = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    with torch.no_grad():
        logits = model(torch.stack([tf(Image.open(p).convert("RGB")) for p in images]))
    return logits.numpy().astype(np.float64)


def class_name(index: int, style: int) -> str:
    """A class written as users write it: the index, the WordNet id, or the name in another spelling."""
    categories = registry.categories()
    name = categories[index]
    if style == 0 or categories.count(name) > 1:
        return str(index)
    if style == 1:
        return registry.wnids()[index]
    return name.lower().replace(" ", "_") if index % 2 else name.upper().replace(" ", "-")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, images, reference):
    """DATA/<class>/<image>: a third of the images labelled with torchvision's top-1 (right), a third with its
    3rd class (top-5 only), a third with a class far down its ranking (wrong); class folders named by index,
    WordNet id and name."""
    root = tmp_path_factory.mktemp("labelled") / "data"
    truth_of = {}
    for i, p in enumerate(images):
        order = np.argsort(-reference[i])
        truth_of[p.name] = (i, int(order[[0, 2, 500][i % 3]]))
    styles = {c: k % 3 for k, c in enumerate(sorted({t for _, t in truth_of.values()}))}
    for p in images:
        t = truth_of[p.name][1]
        folder = root / class_name(t, styles[t])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    # in the order evaluate lists them: class folders by name, then their files by name
    listed = sorted((f for d in root.iterdir() for f in d.iterdir()), key=lambda f: (f.parent.name, f.name))
    y_true = np.array([truth_of[f.name][1] for f in listed])
    return root, [str(f) for f in listed], y_true, reference[[truth_of[f.name][0] for f in listed]]


def oracle(y_true, logits, restrict=None) -> dict:
    from scipy.stats import binomtest
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    present = sorted(set(y_true.tolist()))
    scores = logits.copy()
    if restrict:
        mask = np.full(scores.shape[1], -np.inf)
        mask[present] = 0
        scores = scores + mask
    y_pred = scores.argmax(1)
    k = min(5, len(present) if restrict else scores.shape[1])
    top5 = np.argsort(-scores, axis=1)[:, :k]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, labels=present, average="weighted", zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=present)
    other = np.array([(y_true == c).sum() for c in present]) - cm.sum(1)
    n = len(y_true)
    hit1, hit5 = int((y_pred == y_true).sum()), int(sum(t in row for t, row in zip(y_true, top5)))
    ci = [list(binomtest(h, n).proportion_ci(method="wilson")) for h in (hit1, hit5)]
    return {"present": present, "y_pred": y_pred, "precision": p, "recall": r, "f1": f, "support": s,
            "macro": macro[:3], "weighted": weighted[:3], "matrix": np.hstack([cm, other[:, None]]),
            "top1": hit1 / n, "top5": hit5 / n, "top1_ci": ci[0], "top5_ci": ci[1]}


def check(result: dict, paths, y_true, logits, restrict=False) -> None:
    o = oracle(y_true, logits, restrict)
    categories = registry.categories()
    assert result["images"] == result["evaluated"] == len(paths) and result["failed"] == 0
    for key in ("top1", "top5"):
        assert abs(result[key] - o[key]) < TOL
        assert np.allclose(result[f"{key}_ci"], o[f"{key}_ci"], atol=TOL, rtol=0)
    assert [c["index"] for c in result["classes"]] == o["present"]
    for c, p, r, f, s in zip(result["classes"], o["precision"], o["recall"], o["f1"], o["support"]):
        assert c["label"] == categories[c["index"]] and c["support"] == s
        assert abs(c["precision"] - p) < TOL and abs(c["recall"] - r) < TOL and abs(c["f1"] - f) < TOL
    for avg in ("macro", "weighted"):
        assert np.allclose([result[avg][k] for k in ("precision", "recall", "f1")], o[avg], atol=TOL, rtol=0)
    assert result["confusion"]["labels"] == [categories[c] for c in o["present"]]
    assert np.array_equal(np.array(result["confusion"]["matrix"]), o["matrix"])
    wrong = [(p, categories[t], categories[q]) for p, t, q in zip(paths, y_true, o["y_pred"]) if t != q]
    assert [(m["path"], m["label"], m["predicted"]) for m in result["misclassified"]] == wrong
    assert result["images_per_second"] > 0


def evaluate(cli, *argv) -> tuple[int, object, str]:
    res = cli("evaluate", *argv, "-f", "json")
    return res.code, json.loads(res.stdout) if res.stdout.strip() else None, res.stderr


def test_metrics_equal_torchvision_and_scikit_learn(labelled, checkpoint, cli):
    root, paths, y_true, logits = labelled
    code, result, err = evaluate(cli, root, "-a", "resnet18", "-w", checkpoint("resnet18"))
    assert code == 0, err
    assert 0 < result["top1"] < result["top5"] < 1  # right, top-5-only and wrong answers all occur
    check(result, paths, y_true, logits)
    assert set(result) == {"arch", "weights", "images", "evaluated", "failed", "top1", "top5", "top1_ci", "top5_ci",
                           "classes", "macro", "weighted", "confusion", "misclassified", "failures",
                           "images_per_second"}


def test_restrict_predicts_among_the_present_classes(labelled, checkpoint, cli):
    root, paths, y_true, logits = labelled
    code, result, err = evaluate(cli, root, "-a", "resnet18", "-w", checkpoint("resnet18"), "--restrict")
    assert code == 0, err
    check(result, paths, y_true, logits, restrict=True)
    # Unrestricted, some images are predicted as classes absent from the data; restricted, none is, and
    # their predictions changed
    assert sum(row[-1] for row in oracle(y_true, logits)["matrix"]) > 0
    assert all(row[-1] == 0 for row in result["confusion"]["matrix"])


def test_a_manifest_gives_what_the_folder_gives(labelled, checkpoint, cli, tmp_path):
    root, paths, y_true, logits = labelled
    args = ("-a", "resnet18", "-w", checkpoint("resnet18"))
    _, from_folder, _ = evaluate(cli, root, *args)
    manifest = root.parent / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for p in paths:
            w.writerow([str(Path(p).relative_to(root.parent)), Path(p).parent.name])
    jsonl = root.parent / "manifest.jsonl"
    jsonl.write_text("".join(json.dumps({"path": str(Path(p).relative_to(root.parent)),
                                         "label": Path(p).parent.name}) + "\n" for p in paths))
    for m in (manifest, jsonl):
        code, result, err = evaluate(cli, m, *args)
        assert code == 0, err
        assert {**result, "images_per_second": 0} == {**from_folder, "images_per_second": 0}


def test_a_bad_file_is_a_failure_not_a_wrong_answer(labelled, checkpoint, cli, tmp_path):
    root, paths, y_true, logits = labelled
    data = tmp_path / "data"
    shutil.copytree(root, data)
    some_class = sorted(data.iterdir())[0]
    broken = some_class / "zz_broken.jpg"
    broken.write_bytes(Path(paths[0]).read_bytes()[:300])
    res = cli("evaluate", data, "-a", "resnet18", "-w", checkpoint("resnet18"), "-f", "json")
    assert res.code == 1
    result = json.loads(res.stdout)
    assert result["images"] == len(paths) + 1 and result["evaluated"] == len(paths) and result["failed"] == 1
    assert result["failures"] == [{"path": str(broken), "error": {"type": "truncated", "message":
                                                                  result["failures"][0]["error"]["message"]}}]
    assert f"{broken}: truncated" in res.stderr
    moved = [str(data / Path(p).relative_to(root)) for p in paths]
    check(result | {"images": len(paths), "failed": 0}, moved, y_true, logits)  # the metrics ignore it


def test_two_architectures_give_two_results(labelled, checkpoint, cli):
    root, paths, y_true, logits = labelled
    ck18, ck34 = checkpoint("resnet18"), checkpoint("resnet34")
    code, both, err = evaluate(cli, root, "-a", "resnet18,resnet34", "-w", f"{ck18},{ck34}")
    assert code == 0, err
    assert [r["arch"] for r in both] == ["resnet18", "resnet34"]
    assert [r["weights"] for r in both] == [str(ck18), str(ck34)]
    check(both[0], paths, y_true, logits)
    _, alone, _ = evaluate(cli, root, "-a", "resnet34", "-w", ck34)
    assert {**both[1], "images_per_second": 0} == {**alone, "images_per_second": 0}
    table = cli("evaluate", root, "-a", "resnet18,resnet34", "-w", f"{ck18},{ck34}", "-f", "table").text
    for column in ("acc@1", "acc@5", "images/s", "params", "GFLOPS"):
        assert column in table
    assert "11.7 M" in table and "21.8 M" in table  # resnet18's and resnet34's parameters


def test_predictions_and_confusion_files(labelled, checkpoint, cli, tmp_path):
    root, paths, y_true, logits = labelled
    preds, counts, picture = tmp_path / "p.jsonl", tmp_path / "c.csv", tmp_path / "c.png"
    args = (root, "-a", "resnet18", "-w", checkpoint("resnet18"), "--predictions", preds)
    code, result, err = evaluate(cli, *args, "--confusion", counts)
    assert code == 0, err
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    categories = registry.categories()
    assert [r["path"] for r in records] == paths
    assert [r["label"] for r in records] == [categories[t] for t in y_true]
    assert [r["topk"][0]["index"] for r in records] == oracle(y_true, logits)["y_pred"].tolist()
    rows = list(csv.reader(counts.open()))
    assert rows[0] == ["label", *result["confusion"]["labels"], "other"]
    assert [[int(x) for x in row[1:]] for row in rows[1:]] == oracle(y_true, logits)["matrix"].tolist()
    code, _, err = evaluate(cli, *args, "--confusion", picture)
    assert code == 0, err
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(picture).size[0] > 400


def test_a_label_that_names_no_class_is_a_usage_error_before_any_image_is_read(tmp_path, checkpoint, cli):
    data = tmp_path / "data"
    for name in ("egyptain_cat", "tabby", "crane"):
        (data / name).mkdir(parents=True)
        (data / name / "x.jpg").write_bytes(b"")  # never opened: an empty file would be a failure record
    res = cli("evaluate", data, "-a", "resnet18", "-w", checkpoint("resnet18"))
    assert res.code == 2 and res.stdout == b""
    assert "'egyptain_cat' names no class of resnet18 (did you mean 'Egyptian cat'" in res.stderr
    assert "tabby" not in res.stderr and "crane" not in res.stderr  # ImageNet's classes 281 and 517


def test_a_label_two_classes_share_is_ambiguous_and_the_index_settles_it():
    from resnet_cli.core.errors import UsageError
    from resnet_cli.analysis.labelled import match

    classes = ("Cat", "dog", "cat")  # a custom checkpoint's labels may repeat a name
    with pytest.raises(UsageError, match=r"'CAT' names 2 classes \(0, 2\): use the index"):
        match(["CAT", "dog"], classes)
    assert match(["2", "DOG"], classes) == {"2": 2, "DOG": 1}


def test_a_large_confusion_matrix_shows_the_most_confused_classes(tmp_path):
    """Above 50 classes the picture keeps the 50 classes most involved in mistakes; their rows still add up
    to their support (the columns left out join "other")."""
    from resnet_cli.outputs.plots import confusion_png, most_confused

    n = 80
    labels = [f"class {i}" for i in range(n)]
    matrix = [[0] * (n + 1) for _ in range(n)]
    for i in range(n):
        matrix[i][i] = 10
        if i % 3 == 0:  # every third class is confused with a neighbour, more so the higher its number
            matrix[i][(i + 1) % n] = 1 + i // 3
    keep = most_confused(labels, matrix)
    errors = [sum(matrix[i]) - matrix[i][i] + sum(matrix[j][i] for j in range(n) if j != i) for i in range(n)]
    assert len(keep) == 50 and keep == sorted(keep)
    assert min(errors[i] for i in keep) >= max(errors[i] for i in range(n) if i not in keep)
    assert most_confused(labels[:30], [row[:30] + [0] for row in matrix[:30]]) == list(range(30))
    path = tmp_path / "big.png"
    with path.open("wb") as f:
        confusion_png(f, labels, matrix, title="resnet50")
    assert Image.open(path).size[0] > 1000  # grows with the classes shown, so the names stay readable


def test_a_custom_checkpoints_classes_are_its_labels(tmp_path, images, checkpoint, cli):
    ckpt = checkpoint("resnet18", num_classes=3)
    names = tmp_path / "labels.txt"
    names.write_text("defect\nno defect\nunsure\n")
    data = tmp_path / "data"
    for i, p in enumerate(images[:6]):
        folder = data / ["defect", "No_Defect", "2"][i % 3]  # by name, another spelling, and by index
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    res = cli("evaluate", data, "-a", "resnet18", "-w", ckpt, "--labels", names, "-f", "json")
    assert res.code == 0, res.stderr
    result = json.loads(res.stdout)
    assert [(c["label"], c["index"], c["support"]) for c in result["classes"]] == \
        [("defect", 0, 2), ("no defect", 1, 2), ("unsure", 2, 2)]
    assert result["top5"] == 1.0  # three classes: every label is among the (three) predictions
    res = cli("evaluate", data, "-a", "resnet18", "-w", ckpt)  # without --labels: class_0, class_1, class_2
    assert res.code == 2 and "'defect' names no class of resnet18" in res.stderr
