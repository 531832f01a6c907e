"""Weights: every checkpoint layout users have, published weights from the cache or a verified download,
a clear offline failure, and nothing unsafe ever unpickled."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoints import PHOTOS, ROOT

from resnet_cli.models import registry


def top(res) -> list[list[int]]:
    assert res.code == 0, res.stderr
    return [[t["index"] for t in r["topk"]] for r in res.jsonl()]


def cache_dir() -> Path:
    return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"


@pytest.fixture
def r18(checkpoint):
    return checkpoint("resnet18")


@pytest.mark.parametrize("layout", ["state_dict", "model", "module_prefix", "safetensors"])
def test_training_script_layouts_load_unchanged(layout, r18, cli, tmp_path):
    sd = torch.load(r18, weights_only=True)
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "ckpt.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        path = tmp_path / "ckpt.pth"
        obj = {"module." + k: v for k, v in sd.items()} if layout == "module_prefix" else \
            {layout: sd, "epoch": 90, "optimizer_lr": 0.1}
        torch.save(obj, path)
    args = (*PHOTOS[:2], "-a", "resnet18", "-f", "jsonl")
    assert top(cli(*args, "-w", path)) == top(cli(*args, "-w", r18))


@pytest.mark.timeout(120)
def test_a_checkpoint_whose_unpickling_would_run_code_is_refused_and_never_runs(tmp_path):
    """The tool's own choice of weights_only=True, proven through the real command: with
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 torch unpickles anything unless the caller passes weights_only=True
    itself, so only the tool's explicit argument stands between the file and its payload."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 512), "hook": Payload()}, evil)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    env.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)  # would force the safe load whatever the tool passes
    res = subprocess.run([sys.executable, "-m", "resnet_cli", str(PHOTOS[0]), "-a", "resnet18", "-w", str(evil)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert not marker.exists(), "the checkpoint's payload ran"
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr  # one line: no traceback, no torch warning
    assert "refused" in lines[0] and str(evil) in lines[0]
    assert res.stdout == ""


def test_a_checkpoint_for_another_architecture_names_the_first_mismatching_key(r18, cli, tmp_path):
    res = cli(PHOTOS[0], "-a", "resnet34", "-w", r18)
    assert res.code == 2
    assert "does not fit resnet34" in res.stderr and "--arch resnet18" in res.stderr
    # shapes that fit no known architecture: the first key that differs is named
    sd = torch.load(r18, weights_only=True)
    odd = tmp_path / "odd.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("layer4.1.")}, odd)
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", odd)
    assert res.code == 2 and "does not fit resnet18: missing key 'layer4.1.conv1.weight'" in res.stderr
    res = cli(PHOTOS[0], "-a", "resnet50", "-w", odd)
    assert res.code == 2 and "'layer1.0.conv1.weight' has shape (64, 64, 3, 3)" in res.stderr


def test_other_class_counts_use_labels_or_class_n(checkpoint, cli, tmp_path):
    ckpt = checkpoint("resnet18", num_classes=10)
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", ckpt, "-f", "jsonl", "-k", "3")
    assert [t["label"] for t in res.jsonl()[0]["topk"]] == [f"class_{t['index']}" for t in res.jsonl()[0]["topk"]]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"kind {i}\n" for i in range(10)))
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", ckpt, "-f", "jsonl", "-k", "10", "--labels", labels)
    assert sorted(t["label"] for t in res.jsonl()[0]["topk"]) == sorted(f"kind {i}" for i in range(10))
    assert cli(PHOTOS[0], "-a", "resnet18", "-w", ckpt, "-k", "11").code == 2
    labels.write_text("just\ntwo\n")
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", ckpt, "--labels", labels)
    assert res.code == 2 and "has 2 labels" in res.stderr


def test_published_weights_come_from_torchs_hub_cache_with_their_own_transforms(r18, cli):
    cache_dir().mkdir(parents=True, exist_ok=True)
    shutil.copy(r18, cache_dir() / "resnet18-f37072fd.pth")  # where torchvision would have put it
    res = cli(*PHOTOS[:2], "-a", "resnet18", "-w", "IMAGENET1K_V1", "--offline", "-f", "jsonl")
    recs = res.jsonl()
    assert res.code == 0
    assert recs[0]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert recs[0]["preprocess"] == {"resize": 256, "crop": 224}
    assert top(res) == top(cli(*PHOTOS[:2], "-a", "resnet18", "-w", r18, "-f", "jsonl"))
    # the full enum name alone picks the architecture
    assert top(cli(*PHOTOS[:2], "-w", "ResNet18_Weights.IMAGENET1K_V1", "--offline", "-f", "jsonl")) == top(res)


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.timeout(60)
def test_offline_without_the_file_fails_fast_and_says_what_to_do(how, cli, monkeypatch):
    if how == "env":
        monkeypatch.setenv("RESNET_CLASSIFY_OFFLINE", "1")
    t0 = time.monotonic()
    res = cli(PHOTOS[0], "--arch", "resnet50", *(["--offline"] if how == "flag" else []))
    assert time.monotonic() - t0 < 10
    assert res.code == 3 and res.stdout == b""  # weights unavailable, not a usage error
    spec = registry.get_arch("resnet50").default_weights
    for needed in (spec.file_name, str(cache_dir()), spec.url, "--weights PATH"):
        assert needed in res.stderr


@pytest.mark.timeout(60)
def test_no_network_fails_within_seconds_with_the_offline_message(patched_url, cli):
    import socket

    with socket.socket() as s:  # a port on this machine with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    patched_url(f"http://127.0.0.1:{port}/models/resnet18-f37072fd.pth", "f37072fd")
    t0 = time.monotonic()
    res = cli(PHOTOS[0], "-a", "resnet18")
    assert time.monotonic() - t0 < 10
    assert res.code == 3
    assert "downloading it failed" in res.stderr and "curl -L -o" in res.stderr and "--weights PATH" in res.stderr
    assert not cache_dir().exists() or not any(cache_dir().iterdir())


@pytest.mark.timeout(60)
def test_download_verifies_the_hash_and_lands_in_the_cache_atomically(weights_server, patched_url, r18, cli):
    base, served = weights_server
    body = r18.read_bytes()
    sha = hashlib.sha256(body).hexdigest()[:8]
    name = f"resnet18-{sha}.pth"
    served[f"/models/{name}"] = body
    patched_url(f"{base}/models/{name}", sha)
    res = cli("download", "resnet18", "-q")
    assert res.code == 0, res.stderr
    assert (cache_dir() / name).read_bytes() == body
    assert "downloaded" in res.text
    # and now it is used without any network
    served.clear()
    assert top(cli(PHOTOS[0], "-a", "resnet18", "--offline", "-f", "jsonl")) == \
        top(cli(PHOTOS[0], "-a", "resnet18", "-w", r18, "-f", "jsonl"))


@pytest.mark.timeout(60)
def test_a_download_with_the_wrong_hash_is_rejected_and_leaves_nothing(weights_server, patched_url, r18, cli):
    base, served = weights_server
    served["/models/resnet18-00000000.pth"] = r18.read_bytes()
    patched_url(f"{base}/models/resnet18-00000000.pth", "00000000")
    res = cli(PHOTOS[0], "-a", "resnet18", "-q")
    assert res.code == 3 and "hash mismatch" in res.stderr
    assert list(cache_dir().iterdir()) == []  # no file, no temporary left behind


def test_the_head_shape_is_read_without_torch_and_without_running_code(r18, tmp_path):
    """evaluate learns a checkpoint's class count before torch is imported; a file whose pickle would run code
    gives no answer from the quick reader (and is then refused by the usual, weights_only, reading)."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    from resnet_cli.models.state_dicts import head_shape

    sd = torch.load(r18, weights_only=True)
    sd["fc.weight"] = torch.zeros(7, 512)
    layouts = {
        "bare.pth": sd,
        "wrapped.pth": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        "model.pth": {"model": sd, "optimizer": {"lr": 0.1}},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        assert head_shape(str(tmp_path / name)) == (7, 512), name
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    assert head_shape(str(tmp_path / "w.safetensors")) == (7, 512)
    code = f"import sys; from resnet_cli.models.state_dicts import head_shape; head_shape({str(tmp_path / 'bare.pth')!r}); " \
           "sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"fc.weight": torch.zeros(2, 512), "hook": Payload()}, tmp_path / "evil.pth")
    assert head_shape(str(tmp_path / "evil.pth")) is None
    assert not marker.exists()
