"""Shared fixtures: seeded checkpoints in torchvision's layout, the sample photos, and an in-process CLI.

Published weights cannot be downloaded here, so every test generates its own checkpoints: torchvision's
builder, a fixed seed, BatchNorm statistics calibrated on real photos (so activations behave like a
trained network's instead of exploding through 50 layers), and the head scaled so logits spread like a trained
model's (std 4). Saved with `torch.save(model.state_dict())`, exactly as torchvision's files are.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's torch hub cache, or reaches the network for weights."""
    home = tmp_path_factory.mktemp("torch-home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("RESNET_CLASSIFY_OFFLINE", raising=False)


def make_checkpoint(arch: str, path: Path, seed: int = 0, num_classes: int = 1000) -> Path:
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    tf = weights.transforms()
    photos = torch.stack([tf(Image.open(p).convert("RGB")) for p in PHOTOS])
    last_bns = {id(blk.bn3 if hasattr(blk, "bn3") else blk.bn2)
                for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for blk in layer}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration pass
            with torch.no_grad():
                # Trained ResNets keep each residual branch small next to the identity path (the reason for
                # torchvision's zero_init_residual); a random net with full-size branches is chaotic and would
                # amplify float rounding far beyond what real weights do.
                m.weight.uniform_(0.1, 0.4) if id(m) in last_bns else m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.train()
    with torch.no_grad():
        model(photos)
    model.eval()
    with torch.no_grad():
        logits = model(photos)
        scale = 4.0 / logits.std().clamp_min(1e-6)
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(arch, seed=0) -> path of a cached seeded checkpoint for this test session."""
    folder = tmp_path_factory.mktemp("checkpoints")
    made: dict[tuple, Path] = {}

    def get(arch: str = "resnet18", seed: int = 0, num_classes: int = 1000) -> Path:
        key = (arch, seed, num_classes)
        if key not in made:
            made[key] = make_checkpoint(arch, folder / f"{arch}-s{seed}-c{num_classes}.pth", seed, num_classes)
        return made[key]

    return get


@pytest.fixture
def photos_dir(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in PHOTOS:
        shutil.copy(p, folder / p.name)
    return folder


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8")

    def jsonl(self) -> list[dict]:
        import json

        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def cli():
    """cli(*argv, stdin=b"") runs the command line in-process and captures its streams."""
    from resnet_cli.cli import run

    def invoke(*argv, stdin: bytes = b"") -> Result:
        out, err = io.BytesIO(), io.BytesIO()
        stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
        stderr = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stdout", stdout)
            mp.setattr(sys, "stderr", stderr)
            mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
            code = run([os.fspath(a) for a in argv])
            stdout.flush()
            stderr.flush()
        return Result(code, out.getvalue(), err.getvalue().decode("utf-8", "replace"))

    return invoke
