"""Hostile and unusual weights: registry names that a file cannot shadow, files that are not files, headers
that claim more than the file holds (bounded memory, measured), malformed trained-model metadata, checkpoint
refusals that name what they refuse, training checkpoints with their argparse args, checkpoints of another
architecture, and a weights outage with its own exit code."""

from __future__ import annotations

import argparse
import collections
import fractions
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from checkpoints import PHOTOS, ROOT
from resnet_cli.models import registry


@pytest.fixture
def r18(checkpoint):
    return checkpoint("resnet18")


def cache_dir() -> Path:
    return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"


def top(res) -> list[list[int]]:
    assert res.code == 0, res.stderr
    return [[t["index"] for t in r["topk"]] for r in res.jsonl()]


def one_line_error(res, *needles: str, code: int = 2) -> str:
    assert res.code == code, res.stderr
    assert res.stdout == b""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnet-classify: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "\x1b" not in lines[0]
    return lines[0]


def run_measured(args: list[str], *, cwd=ROOT, env=None, timeout: float = 120) -> tuple[int, str, int]:
    """The CLI in a child process under a 4 GB address-space limit: (exit code, stderr, the child's peak RSS
    in MB, from getrusage)."""
    code = textwrap.dedent(f"""
        import resource, subprocess, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        r = subprocess.run({[sys.executable, "-m", "resnet_cli", *args]!r}, capture_output=True, text=True,
                           timeout={timeout - 10})
        sys.stderr.write(r.stderr)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
        sys.exit(r.returncode)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    return res.returncode, res.stderr, int(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def labelled_dir(tmp_path) -> Path:
    data = tmp_path / "data"
    for cls, photo in (("tench", PHOTOS[0]), ("goldfish", PHOTOS[1])):
        (data / cls).mkdir(parents=True)
        shutil.copy(photo, data / cls / photo.name)
    return data


# --- 17 A4: registry names win over files ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["DEFAULT", "default", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1",
                                  "ResNet18_Weights.DEFAULT"])
def test_a_file_named_like_published_weights_does_not_shadow_them(name, r18, cli, tmp_path, monkeypatch):
    cache_dir().mkdir(parents=True, exist_ok=True)
    shutil.copy(r18, cache_dir() / "resnet18-f37072fd.pth")
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(b"not a checkpoint at all")
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", name, "--offline", "-f", "jsonl")
    assert res.code == 0, res.stderr
    assert res.jsonl()[0]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    # the file is still reached, by a path
    one_line_error(cli(PHOTOS[0], "-a", "resnet18", "-w", f"./{name}"), f"./{name}", "not a readable")


def test_a_file_named_default_is_reached_as_dot_slash_default(r18, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(r18, "DEFAULT")
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", "./DEFAULT", "-f", "jsonl")
    assert res.jsonl()[0]["weights"] == "./DEFAULT"
    assert top(res) == top(cli(PHOTOS[0], "-a", "resnet18", "-w", r18, "-f", "jsonl"))
    # names that only look like an enum's are files as before
    for name in ("resnet18_weights.pth", "ResNet18_Weights.best"):
        shutil.copy(r18, name)
        res = cli(PHOTOS[0], "-a", "resnet18", "-w", name, "-f", "jsonl")
        assert res.code == 0 and res.jsonl()[0]["weights"] == name, res.stderr
    # offline and not cached: DEFAULT is the published name, not the file
    res = cli(PHOTOS[0], "-a", "resnet18", "-w", "DEFAULT", "--offline")
    assert res.code == 3 and "ResNet18_Weights.IMAGENET1K_V1 are not in the cache" in res.stderr, res.stderr


# --- 17 B13: a weights path that is not a regular file ------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_fifo_as_weights_is_refused_without_waiting(suffix, tmp_path):
    fifo = tmp_path / f"w{suffix}"
    os.mkfifo(fifo)
    res = subprocess.run([sys.executable, "-m", "resnet_cli", str(PHOTOS[0]), "-w", str(fifo)], cwd=ROOT,
                         capture_output=True, text=True, timeout=40)
    assert res.returncode == 2, res.stderr
    assert str(fifo) in res.stderr and "FIFO" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_folder_or_a_device_as_weights_is_refused(cli, tmp_path):
    one_line_error(cli(PHOTOS[0], "-w", tmp_path), str(tmp_path), "folder")
    one_line_error(cli(PHOTOS[0], "-w", "/dev/null"), "/dev/null", "device")


# --- 17 B7: headers that claim more than the file holds -----------------------------------------------------

def _safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.timeout(120)
def test_a_tiny_safetensors_claiming_a_huge_head_is_refused_in_little_memory(labelled_dir, tmp_path):
    """A 95-byte file declaring fc.weight of 4e9 x 512: before, evaluate built 4e9 label strings (MemoryError
    at 7.9 GB); now safetensors' own header check refuses it before anything is built."""
    huge = _safetensors(tmp_path / "huge.safetensors",
                        {"fc.weight": {"dtype": "F32", "shape": [4_000_000_000, 512], "data_offsets": [0, 4]}},
                        b"\0" * 4)
    for args in (["evaluate", str(labelled_dir), "-a", "resnet18"], ["evaluate", str(labelled_dir)],
                 [str(PHOTOS[0])]):
        code, err, rss_mb = run_measured([*args, "-w", str(huge)])
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(huge) in err, err
        assert rss_mb < 400, rss_mb


def test_a_consistent_head_with_more_than_a_million_classes_is_refused(labelled_dir, tmp_path, cli):
    n = 1_000_001  # one byte a class: a 1 MB file whose header is true
    big = _safetensors(tmp_path / "big.safetensors",
                       {"fc.weight": {"dtype": "U8", "shape": [n, 1], "data_offsets": [0, n]}}, b"\0" * n)
    one_line_error(cli("evaluate", labelled_dir, "-a", "resnet18", "-w", big), str(big), "1,000,000")


def _zip_bomb(path: Path, pad: int) -> Path:
    """A torch.save zip whose data.pkl, deflated, unpacks to `pad` more bytes (after the pickle's STOP)."""
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(3, 512)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in src.namelist():
            with z.open(name, "w", force_zip64=True) as f:
                f.write(src.read(name))
                if name.endswith("data.pkl"):
                    zeros = bytes(1 << 24)
                    for _ in range(pad >> 24):
                        f.write(zeros)
    return path


@pytest.mark.timeout(180)
def test_a_pth_zip_bomb_is_refused_before_it_is_unpacked(labelled_dir, tmp_path):
    """Before: the pickle was unpacked whole to read the head's shape (2 GiB inside 2 MB: 4.2 GB RSS)."""
    bomb = _zip_bomb(tmp_path / "bomb.pth", 512 << 20)
    assert bomb.stat().st_size < 2 << 20
    for args in (["evaluate", str(labelled_dir), "-a", "resnet18"], [str(PHOTOS[0]), "-a", "resnet18"]):
        code, err, rss_mb = run_measured([*args, "-w", str(bomb)])
        assert code == 2 and str(bomb) in err and "unpacked" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert rss_mb < 400, rss_mb


def _lying_pth(path: Path, size: tuple[int, ...], numel: int = 4) -> Path:
    """A .pth zip whose pickle declares fc.weight of `size` over a storage of `numel` floats."""
    marker = object()

    class Fake:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (marker, 0, size, (size[1], 1), False, collections.OrderedDict()))

    class Pickler(__import__("pickle").Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is marker else None

    pkl = io.BytesIO()
    Pickler(pkl, protocol=2).dump(collections.OrderedDict({"fc.weight": Fake()}))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl.getvalue())
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data/0", bytes(16))  # four floats, whatever the pickle claims
    return path


@pytest.mark.timeout(120)
def test_a_pth_whose_pickle_claims_a_tensor_larger_than_its_data_is_refused(labelled_dir, tmp_path):
    lying = _lying_pth(tmp_path / "lying.pth", (4_000_000_000, 512))
    code, err, rss_mb = run_measured(["evaluate", str(labelled_dir), "-a", "resnet18", "-w", str(lying)])
    assert code == 2 and str(lying) in err and "claims more" in err, err
    assert rss_mb < 400, rss_mb
    # a storage that claims more elements than the zip holds bytes for it
    lying = _lying_pth(tmp_path / "lying2.pth", (3, 512), numel=10**12)
    code, err, _ = run_measured(["evaluate", str(labelled_dir), "-a", "resnet18", "-w", str(lying)])
    assert code == 2 and str(lying) in err and "storage claims" in err, err


# --- 17 B12: a trained model's metadata -----------------------------------------------------------------------

GOOD_META = {"arch": "resnet18", "base_weights": "ResNet18_Weights.IMAGENET1K_V1", "labels": ["cat", "dog"],
             "preprocess": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                            "interpolation": "bilinear"}}


def _model(path: Path, meta) -> Path:
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 512)}, path, metadata={"resnet_classify": json.dumps(meta)})
    return path


def _with(field: str, value):
    meta = json.loads(json.dumps(GOOD_META))
    parent, _, key = field.rpartition(".")
    target = meta[parent] if parent else meta
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return meta


BAD_METADATA = {
    "a list": ([GOOD_META], "a list"),
    "no arch": (_with("arch", KeyError), "'arch'"),
    "unknown arch": (_with("arch", "resnet9000"), "'arch'"),
    "labels a string": (_with("labels", "cat,dog"), "'labels'"),
    "no labels": (_with("labels", []), "'labels'"),
    "two-element mean": (_with("preprocess.mean", [0.5, 0.5]), "'preprocess.mean'"),
    "std zero": (_with("preprocess.std", [0.2, 0.0, 0.2]), "'preprocess.std'"),
    "crop 0": (_with("preprocess.crop", 0), "'preprocess.crop'"),
    "crop 60000": (_with("preprocess.crop", 60000), "'preprocess.crop'"),
    "crop a string": (_with("preprocess.crop", "224"), "'preprocess.crop'"),
    "resize 1e6": (_with("preprocess.resize", 10**6), "'preprocess.resize'"),
    "no preprocess": (_with("preprocess", KeyError), "'preprocess'"),
    "unknown interpolation": (_with("preprocess.interpolation", "spline"), "'preprocess.interpolation'"),
    "not JSON": (None, "not JSON"),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_malformed_model_metadata_is_a_usage_error_naming_the_file_and_the_field(case, cli, tmp_path):
    meta, field = BAD_METADATA[case]
    path = tmp_path / "model.safetensors"
    if meta is None:
        from safetensors.torch import save_file

        save_file({"fc.weight": torch.zeros(2, 512)}, path, metadata={"resnet_classify": "{arch: resnet18"})
    else:
        _model(path, meta)
    # before any input is read: the input does not even exist, and is never reported
    line = one_line_error(cli(tmp_path / "missing.jpg", "-w", path), str(path), field)
    assert "missing.jpg" not in line


def test_resize_and_crop_are_bounded_in_options_and_metadata(cli, tmp_path):
    from resnet_cli.models.preprocess import _PIL_FILTERS
    from resnet_cli.models.resolve import INTERPOLATIONS, MAX_CROP, MAX_RESIZE, resolve

    assert set(INTERPOLATIONS) == set(_PIL_FILTERS)
    assert resolve("resnet18", "DEFAULT", MAX_RESIZE, MAX_CROP).preprocess.crop == MAX_CROP
    meta = _with("preprocess.crop", MAX_CROP)
    meta["preprocess"]["resize"] = MAX_RESIZE
    resolved = resolve(None, str(_model(tmp_path / "m.safetensors", meta)))  # a model at the limits loads
    assert resolved.arch.name == "resnet18" and resolved.labels == ("cat", "dog")
    assert (resolved.preprocess.resize, resolved.preprocess.crop) == (MAX_RESIZE, MAX_CROP)
    for args in (("--crop", "60000"), ("--crop", str(MAX_CROP + 1)), ("--resize", str(MAX_RESIZE + 1)),
                 ("--resize", "2048")):  # 2048 alone keeps the framing with a crop of 1792
        one_line_error(cli(PHOTOS[0], "-a", "resnet18", "--offline", *args), args[0])


# --- 17 C14 and 18.9: what a checkpoint holds beside its tensors ---------------------------------------------

class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_refusal_names_the_global_says_how_to_resave_and_has_no_escapes(cli, tmp_path):
    for name, extra in (("posix.system", _Payload(tmp_path / "ran")), ("fractions.Fraction", fractions.Fraction(1, 3))):
        path = tmp_path / "ckpt.pth"
        torch.save({"state_dict": {"fc.weight": torch.zeros(2, 512)}, "extra": extra}, path)
        one_line_error(cli(PHOTOS[0], "-a", "resnet18", "-w", path), str(path), "refused", name,
                       "torch.save(model.state_dict(), path)")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("layout", ["timm", "torchvision"])
def test_a_training_checkpoint_with_argparse_args_loads_and_answers_like_its_state_dict(layout, r18, cli,
                                                                                        tmp_path):
    sd = torch.load(r18, weights_only=True)
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=90, data_dir="/data", amp=True, drop=None,
                              sched=["cosine"])
    if layout == "timm":  # timm's train.py: CheckpointSaver
        obj = {"epoch": 89, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
               "version": 2, "args": args, "metric": 71.5, "state_dict_ema": sd}
    else:  # torchvision's references/classification/train.py
        obj = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {}, "epoch": 89,
               "args": args}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(obj, path)
    want = top(cli(*PHOTOS[:2], "-a", "resnet18", "-w", r18, "-f", "jsonl"))
    assert top(cli(*PHOTOS[:2], "-a", "resnet18", "-w", path, "-f", "jsonl")) == want
    res = cli(*PHOTOS[:2], "-w", path, "-f", "jsonl")  # and its shapes say resnet18
    assert top(res) == want and res.jsonl()[0]["arch"] == "resnet18"
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # allowed for one load only


@pytest.mark.timeout(120)
def test_a_namespace_checkpoint_with_a_payload_is_still_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 512)}, "args": argparse.Namespace(lr=0.1),
                "hook": _Payload(marker)}, evil)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    env.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    res = subprocess.run([sys.executable, "-m", "resnet_cli", str(PHOTOS[0]), "-a", "resnet18", "-w", str(evil)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert not marker.exists(), "the checkpoint's payload ran"
    assert res.returncode == 2 and "refused" in res.stderr and "system" in res.stderr, res.stderr
    # an argparse.Namespace whose state smuggles a payload: the payload is a global of its own, refused too
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 512)}, "args": argparse.Namespace(hook=_Payload(marker))},
               evil)
    res = subprocess.run([sys.executable, "-m", "resnet_cli", str(PHOTOS[0]), "-a", "resnet18", "-w", str(evil)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert not marker.exists() and res.returncode == 2 and "refused" in res.stderr, res.stderr


# --- 18.14: a checkpoint of another architecture -------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_a_checkpoint_without_arch_runs_as_the_architecture_its_shapes_identify(arch, checkpoint, cli):
    ckpt = checkpoint(arch)
    res = cli(*PHOTOS[:2], "-w", ckpt, "-f", "jsonl")
    assert res.code == 0, res.stderr
    assert {r["arch"] for r in res.jsonl()} == {arch}
    assert top(res) == top(cli(*PHOTOS[:2], "-a", arch, "-w", ckpt, "-f", "jsonl"))


def test_a_checkpoint_that_conflicts_with_arch_names_the_arch_it_fits(checkpoint, cli, labelled_dir):
    r34 = checkpoint("resnet34")
    for cmd in ([PHOTOS[0]], ["evaluate", labelled_dir], ["explain", PHOTOS[0], "--out", labelled_dir.parent / "o"]):
        for arch in ("resnet18", "resnet50"):
            one_line_error(cli(*cmd, "-a", arch, "-w", r34), f"does not fit {arch}", "--arch resnet34")


def test_every_registry_architecture_is_recognised_from_its_shapes():
    import torchvision

    from resnet_cli.models.state_dicts import infer_arch

    for name, spec in registry.architectures().items():
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None, num_classes=7)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert infer_arch(shapes) == spec, name
        assert infer_arch({f"module.{k}": v for k, v in shapes.items()}) == spec, name
    assert infer_arch({"fc.weight": (10, 512)}) is None


# --- 18.16: a weights outage has its own exit code ----------------------------------------------------------

@pytest.fixture
def weights_served(patched_url):
    """weights_served(status, body, sha_prefix): resnet18's IMAGENET1K_V1 served from this machine."""
    import http.server
    import threading

    answer: dict = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(answer["status"])
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def serve(status: int, body: bytes, sha_prefix: str) -> None:
        answer.update(status=status, body=body)
        patched_url(f"http://127.0.0.1:{server.server_address[1]}/models/resnet18-{sha_prefix}.pth", sha_prefix)

    yield serve
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
def test_a_failed_weights_download_exits_3_not_the_usage_code(weights_served, cli, labelled_dir):
    weights_served(503, b"down for maintenance", "f37072fd")
    for args in ([PHOTOS[0], "-a", "resnet18"], ["download", "resnet18", "-q"],
                 ["evaluate", labelled_dir, "-a", "resnet18"]):
        res = cli(*args)
        assert res.code == 3, res.stderr
        assert "downloading it failed: HTTP 503" in res.stderr
    # a typo is still a usage error, and offline without the file is the weights' absence, not a typo
    assert cli(PHOTOS[0], "-a", "resnet18", "-w", "IMAGENET1K_V9").code == 2
    assert cli(PHOTOS[0], "-a", "resnet18", "--offline").code == 3


@pytest.mark.timeout(60)
def test_a_hash_mismatch_prints_the_whole_hash_and_exits_3(weights_served, r18, cli):
    body = r18.read_bytes()
    weights_served(200, body, "0badc0de")
    res = cli(PHOTOS[0], "-a", "resnet18", "-q")
    assert res.code == 3, res.stderr
    assert hashlib.sha256(body).hexdigest() in res.stderr and "0badc0de" in res.stderr
