"""The Python API (resnet_cli.classify, resnet_cli.embed, resnet_cli.Classifier; docs/python.md) gives the
command line's records to the byte, refuses what the command line refuses, and `import resnet_cli` stays light.
The oracle is the command line itself: its JSON Lines, parsed and dumped again with the package's own dumps."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnet_cli
from checkpoints import PHOTOS, ROOT
from resnet_cli.outputs.writers import dumps

DOCS_PYTHON = ROOT / "docs" / "python.md"


@pytest.fixture
def inputs(photos_dir, tmp_path) -> list[str]:
    """The sample photos, a broken file and a missing file, in an order that mixes them."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(PHOTOS[0]).read_bytes()[:600])  # a truncated JPEG or PNG
    paths = sorted(str(p) for p in photos_dir.iterdir())
    return [paths[0], str(broken), *paths[1:3], str(tmp_path / "missing.png"), *paths[3:]]


def cli_lines(cli, *argv) -> list[str]:
    res = cli(*argv)
    assert res.code == 1, res.stderr  # the broken and missing files: exit 1
    return [dumps(json.loads(line)) for line in res.text.splitlines()]


def test_classify_gives_the_cli_jsonl_records_to_the_byte_failures_in_their_place(cli, checkpoint, inputs):
    ckpt = str(checkpoint("resnet18"))
    expected = cli_lines(cli, *inputs, "--arch", "resnet18", "--weights", ckpt, "-f", "jsonl", "--topk", "3")
    got = [dumps(r) for r in resnet_cli.classify(inputs, arch="resnet18", weights=ckpt, topk=3, device="cpu")]
    assert got == expected
    assert [json.loads(line)["path"] for line in got] == inputs  # input order, one each
    kinds = [r["error"]["type"] for r in map(json.loads, got) if "error" in r]
    assert sorted(kinds) == ["not_found", "truncated"]


def test_classify_takes_a_folder_a_glob_and_a_single_string_as_the_cli_does(cli, checkpoint, photos_dir):
    ckpt = str(checkpoint("resnet18"))
    for args in ([str(photos_dir)], [str(photos_dir / "*.png")]):
        res = cli(*args, "--arch", "resnet18", "--weights", ckpt, "-f", "jsonl", "--batch-size", "3")
        assert res.code == 0, res.stderr
        got = [dumps(r) for r in resnet_cli.classify(args, arch="resnet18", weights=ckpt, batch_size=5)]
        assert got == [dumps(json.loads(line)) for line in res.text.splitlines()]
    one = list(resnet_cli.classify(str(photos_dir / "chelsea.png"), arch="resnet18", weights=ckpt))
    assert [r["path"] for r in one] == [str(photos_dir / "chelsea.png")]


@pytest.mark.timeout(60)
def test_classify_is_streamed_and_closing_it_early_stops_the_engine(checkpoint, photos_dir):
    import threading

    before = {t.ident for t in threading.enumerate()}
    stream = resnet_cli.classify([str(photos_dir)] * 20, arch="resnet18", weights=str(checkpoint("resnet18")),
                                 workers=2)
    first = next(stream)
    assert first["path"].startswith(str(photos_dir))
    stream.close()
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the decode threads finish the image in hand, then go
        left = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("decode")]
        if not left:
            break
        time.sleep(0.1)
    assert not left


def test_embed_gives_the_cli_jsonl_file_to_the_byte(cli, checkpoint, inputs, tmp_path):
    ckpt = str(checkpoint("resnet18"))
    for extra, normalize in (((), False), (("--normalize",), True)):
        out = tmp_path / f"v{normalize}.jsonl"
        res = cli("embed", *inputs, "-o", out, "--arch", "resnet18", "--weights", ckpt, *extra)
        assert res.code == 1, res.stderr
        got = "".join(dumps(r) + "\n" for r in resnet_cli.embed(inputs, arch="resnet18", weights=ckpt,
                                                                normalize=normalize))
        assert got == out.read_text(encoding="utf-8")
    vectors = [r["embedding"] for r in resnet_cli.embed(inputs, arch="resnet18", weights=ckpt, normalize=True)
               if "embedding" in r]
    assert len(vectors) == len(PHOTOS) and all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)


@pytest.fixture(scope="module")
def classifier(checkpoint):
    """One Classifier on the seeded resnet18 checkpoint for the module's tests: loaded once, called often."""
    path = str(checkpoint("resnet18"))
    return path, resnet_cli.Classifier("resnet18", path, topk=3, device="cpu")


def test_a_classifier_on_paths_and_on_pil_images_gives_the_cli_records(cli, classifier, inputs):
    ckpt, clf = classifier
    expected = [json.loads(line) for line in
                cli_lines(cli, *inputs, "--arch", "resnet18", "--weights", ckpt, "-f", "jsonl", "--topk", "3")]
    assert [dumps(r) for r in clf(inputs)] == [dumps(r) for r in expected]  # paths: failures included

    good = [p for p in inputs if Path(p).name in {q.name for q in PHOTOS}]
    images = [Image.open(p) for p in good]
    got = clf.classify(images)
    want = [dict(r, path=f"<image {i}>") for i, r in enumerate(e for e in expected if e["path"] in good)]
    assert [dumps(r) for r in got] == [dumps(r) for r in want]
    assert images[0].mode in ("RGB", "RGBA", "P", "L")  # the caller's image is left as it was
    assert clf(images[0])[0]["topk"] == want[0]["topk"]  # one image, not in a list


def test_a_classifier_on_uint8_pixels_equals_it_on_the_pil_image(classifier):
    from resnet_cli.inputs.images import in_memory
    from resnet_cli.models.preprocess import resize_and_crop

    _, clf = classifier
    pils = [Image.open(p) for p in PHOTOS[:3]]
    arrays = np.stack([np.asarray(resize_and_crop(in_memory(im), clf.preprocess)) for im in pils])
    assert arrays.shape == (3, clf.preprocess.crop, clf.preprocess.crop, 3) and arrays.dtype == np.uint8
    by_pil = clf(pils)
    assert clf(arrays) == by_pil
    import torch

    assert clf(torch.from_numpy(arrays)) == by_pil
    assert clf([arrays[0], pils[1], str(PHOTOS[2])])[:2] == by_pil[:2]
    with pytest.raises(TypeError, match="uint8"):
        clf(arrays.astype(np.float32) / 255)
    with pytest.raises(TypeError, match=r"\(224, 224, 3\)"):
        clf(np.zeros((2, 100, 100, 3), np.uint8))
    with pytest.raises(TypeError, match="int"):
        clf(42)


def test_a_classifier_embeds_as_the_embed_command_and_says_what_it_runs(cli, classifier, tmp_path):
    ckpt, clf = classifier
    out = tmp_path / "v.jsonl"
    assert cli("embed", *PHOTOS, "-o", out, "--arch", "resnet18", "--weights", ckpt, "--normalize").code == 0
    got = "".join(dumps(r) + "\n" for r in clf.embed([str(p) for p in PHOTOS], normalize=True))
    assert got == out.read_text(encoding="utf-8")
    assert (clf.arch, clf.weights, len(clf.labels), clf.device) == ("resnet18", ckpt, 1000, "cpu")
    assert (clf.preprocess.resize, clf.preprocess.crop) == (256, 224)


def test_an_unknown_option_is_a_type_error_naming_it(checkpoint):
    with pytest.raises(TypeError, match="'batchsize'"):
        resnet_cli.classify(["x.jpg"], arch="resnet18", batchsize=8)
    with pytest.raises(TypeError, match="'labels'"):  # embeddings have no class names
        resnet_cli.embed(["x.jpg"], arch="resnet18", labels="names.txt")
    with pytest.raises(TypeError, match="'format'"):
        resnet_cli.classify(["x.jpg"], format="csv")


@pytest.mark.parametrize("call, message", [
    (lambda: resnet_cli.classify(["x.jpg"], arch="resnet19"), "resnet19"),
    (lambda: resnet_cli.embed(["x.jpg"], arch="resnet19"), "resnet19"),
    (lambda: resnet_cli.Classifier("resnet19"), "resnet19"),
    (lambda: resnet_cli.classify(["x.jpg"], arch="resnet18", precision="fp64"), "fp64"),
    (lambda: resnet_cli.classify(["x.jpg"], arch="resnet18", device="gpu"), "gpu"),
    (lambda: resnet_cli.classify(["x.jpg"], arch="resnet18", engine="spark"), "spark"),
    (lambda: resnet_cli.classify(["x.jpg"], arch="resnet18", batch_size=0), "batch_size"),
    (lambda: resnet_cli.classify(["x.jpg"], arch="resnet18", topk=0), "topk"),
    (lambda: resnet_cli.classify(["x.jpg"], arch="resnet18", topk=1001), "1001"),
    (lambda: resnet_cli.classify(["-"], arch="resnet18"), "stdin"),
    (lambda: resnet_cli.classify(["x.jpg"], arch="resnet18", offline=True), "offline"),
])
def test_usage_problems_raise_usage_error_when_called(call, message):
    """Raised by the call itself, before any input is read (a generator would only raise at next())."""
    with pytest.raises(resnet_cli.UsageError, match=message):
        call()


def test_a_device_this_machine_lacks_is_a_usage_error(checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")  # the refusal is for machines without one
    with pytest.raises(resnet_cli.UsageError, match="no CUDA GPU"):
        resnet_cli.Classifier("resnet18", str(checkpoint("resnet18")), device="cuda")


def test_import_resnet_cli_imports_no_torch_until_a_model_is_needed():
    code = ("import sys, resnet_cli\n"
            "resnet_cli.classify, resnet_cli.embed, resnet_cli.Classifier, resnet_cli.UsageError\n"
            "print('torch' in sys.modules, 'PIL' in sys.modules)\n"
            "import resnet_cli.models.inference\n"
            "print('torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "True"]  # the last line shows the check can see torch


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_python_docs_examples_run(checkpoint, photos_dir, tmp_path, monkeypatch):
    """Every ```python block of docs/python.md, in order, in one namespace, as a reader would paste them: the
    checkpoint they name by RESNET_CLASSIFY_EXAMPLE_WEIGHTS is a seeded one, the photos are the samples."""
    blocks = python_blocks(DOCS_PYTHON.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    monkeypatch.setenv("RESNET_CLASSIFY_EXAMPLE_WEIGHTS", str(checkpoint("resnet18")))
    monkeypatch.chdir(photos_dir.parent)  # photos_dir is ./photos there
    namespace: dict = {"__name__": "docs_python"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{DOCS_PYTHON.name} block {i + 1}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"docs/python.md, python block {i + 1} fails: {exc!r}\n{block}") from exc


def test_classify_takes_tta_as_the_command_line_does(checkpoint, cli):
    """`tta=True` is `--tta`: the same records, to the byte."""
    import resnet_cli
    from resnet_cli.outputs.writers import dumps

    ckpt = str(checkpoint("resnet18"))
    photos = [str(p) for p in PHOTOS[:2]]
    api = [dumps(r) for r in resnet_cli.classify(photos, arch="resnet18", weights=ckpt, tta=True)]
    assert api == cli(*photos, "-a", "resnet18", "-w", ckpt, "--tta", "-f", "jsonl").text.splitlines()
    assert api != [dumps(r) for r in resnet_cli.classify(photos, arch="resnet18", weights=ckpt)]
