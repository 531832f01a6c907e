"""--engine ray: the same records, order and exit code as the local engine, on a local Ray of 2 CPUs.

CI installs the ray extra, so nothing here skips when Ray is missing: a missing Ray fails these tests.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from resnet_cli.cli.commands.stream import write_records as run
from resnet_cli.run.job import InputOptions, ModelOptions, RunOptions, make_job
from resnet_cli.run.tasks import Classify
from resnet_cli.outputs.writers import Format

pytestmark = pytest.mark.ray

from checkpoints import SAMPLES  # noqa: E402
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "grace_hopper.jpg"]


@pytest.fixture(scope="module")
def resnet18_seed0(tmp_path_factory) -> str:
    """torchvision's resnet18 as initialised after manual_seed(0): the plain seeded checkpoint of the issue."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18-seed0.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 photos, a truncated JPEG and a text file named .jpg (sorted by name, the truncated one comes 2nd)."""
    d = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(SAMPLES / name, d / name)
    jpeg = (SAMPLES / "rocket.jpg").read_bytes()
    (d / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (d / "notes.jpg").write_text("not a picture\n")
    return d


def classify(inputs: list[str], **options) -> tuple[int, list[dict], str]:
    """The classify command's job in this process (so that the local engine's threads can be pinned)."""
    out, err = io.BytesIO(), io.StringIO()
    model = ModelOptions(options.pop("arch"), options.pop("weights")).resolve()
    job = make_job(inputs, model, Classify(options.pop("topk")), RunOptions(**options), listing=InputOptions())
    code = run(job, Format.jsonl, None, stdout=out, stderr=err)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


# thread method: a SIGALRM cannot interrupt a blocking ray.get (the timeout would only land once it returns);
# the thread method ends the whole pytest run, which is what a hung Ray must do in CI
@pytest.mark.timeout(300, method="thread")
def test_ray_engine_records_equal_local_engine(folder, resnet18_seed0, capfd):
    import ray

    # The folder, then its files again in another order with a missing one: at batch size 2, Ray Data cuts
    # this into several blocks and batches, and the records must still come back in input order.
    again = ["notes.jpg", *PHOTOS[::-1], "broken.jpg", "missing.jpg", *PHOTOS[:2]]
    inputs = [str(folder), *(str(folder / n) for n in again)]
    opts = dict(arch="resnet18", weights=resnet18_seed0, topk=5, batch_size=2, workers=2)
    # The local engine runs on every core, each Ray actor on one thread, batches are cut elsewhere: the network's
    # fixed forward shape makes the records equal to the last bit all the same.
    local_code, local, local_err = classify(inputs, **opts)
    had_ray = ray.is_initialized()
    capfd.readouterr()
    # --workers 2: the engine starts a local Ray of 2 CPUs, one model actor on each, and stops it at the end.
    ray_code, records, ray_err = classify(inputs, engine="ray", **opts)

    assert capfd.readouterr().out == ""  # Ray's own messages never reach stdout
    assert ray.is_initialized() == had_ray
    in_folder = [str(folder / n) for n in sorted(os.listdir(folder))]
    assert [r["path"] for r in local] == in_folder + inputs[1:]
    assert [r.get("error", {}).get("type") for r in local[:6]] == [None, "truncated", None, None, None,
                                                                   "not_an_image"]
    assert records == local  # record for record, in order, probabilities included
    assert ray_code == local_code == 1
    assert [line for line in ray_err.splitlines() if line.startswith("resnet-classify:")] == \
        local_err.splitlines()


def test_ray_engine_without_ray_is_usage_error(monkeypatch, capsys, folder, resnet18_seed0):
    from resnet_cli.cli import run

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when the extra is not installed
    code = run([str(folder), "--arch", "resnet18", "--weights", resnet18_seed0, "--engine", "ray"])
    captured = capsys.readouterr()
    assert code == 2
    assert "pip install 'resnet-classify[ray]'" in captured.err
    assert captured.out == ""


def test_remote_uris_are_listed_and_read_through_pyarrow(monkeypatch, folder):
    """s3:// and gs:// are listed and read through pyarrow's file systems, by both engines' one source layer;
    here the bucket is a local folder behind pyarrow's LocalFileSystem."""
    from pyarrow import fs as pafs

    from resnet_cli.inputs import cloud
    from resnet_cli.run.pipeline import prepare
    from resnet_cli.inputs.readers import Network
    from resnet_cli.models.registry import get_arch
    from resnet_cli.inputs.sources import Source, expand

    def local_bucket(uri):
        return pafs.LocalFileSystem(), str(folder) + uri.split("://", 1)[1][len("bucket"):]

    monkeypatch.setattr(cloud, "filesystem", local_bucket)
    uri = "s3://bucket"
    sources = list(expand([uri, uri + "/nope.jpg"]))
    assert [s.path for s in sources[:-1]] == [f"{uri}/{n}" for n in sorted(os.listdir(folder))]
    assert sources[-1].error.kind == "not_found"
    pre = get_arch("resnet18").default_weights.preprocess
    ok = prepare(sources[0], pre)
    assert ok.error is None and len(ok.pixels) == pre.crop * pre.crop * 3
    assert prepare(sources[1], pre).error.kind == "truncated"
    assert prepare(Source(uri + "/gone.jpg"), pre).error.kind == "not_found"
    # --offline: neither listed nor read, one failure record naming the reason
    offline = Network(offline=True)
    [refused] = list(expand([uri], network=offline))
    assert refused.error.kind == "download_failed" and "--offline" in refused.error.message
    assert prepare(Source(uri + "/chelsea.png"), pre, network=offline).error.kind == "download_failed"
