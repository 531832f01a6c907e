"""Shared fixtures: seeded checkpoints in torchvision's layout (checkpoints.py), the sample photos, and an
in-process CLI."""

from __future__ import annotations

import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from checkpoints import PHOTOS, make_checkpoint


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's torch hub cache, or reaches the network for weights."""
    home = tmp_path_factory.mktemp("torch-home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("RESNET_CLASSIFY_CACHE", str(home / "resnet-classify-cache"))
    monkeypatch.delenv("RESNET_CLASSIFY_OFFLINE", raising=False)


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


@pytest.fixture(scope="session")
def cli():
    """cli(*argv, stdin=b"", cwd=None) runs the command line in-process (in folder `cwd` when given) and captures
    its streams. Session-scoped (it keeps no state), so that module-scoped fixtures can run commands too."""
    from resnet_cli.cli import run

    def invoke(*argv, stdin: bytes = b"", cwd=None) -> Result:
        out, err = io.BytesIO(), io.BytesIO()
        stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
        stderr = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stdout", stdout)
            mp.setattr(sys, "stderr", stderr)
            mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
            if cwd is not None:
                mp.chdir(cwd)
            code = run([os.fspath(a) for a in argv])
            stdout.flush()
            stderr.flush()
        return Result(code, out.getvalue(), err.getvalue().decode("utf-8", "replace"))

    return invoke


@pytest.fixture
def patched_url(monkeypatch):
    """Point resnet18's IMAGENET1K_V1 at another URL and hash (a server on this machine)."""
    import copy
    import json
    from importlib import resources

    from resnet_cli.models import registry

    data = json.loads(resources.files("resnet_cli").joinpath("data", "registry.json").read_text())

    def patch(url: str, sha_prefix: str) -> None:
        d = copy.deepcopy(data)
        w = d["architectures"]["resnet18"]["weights"]["IMAGENET1K_V1"]
        w["url"], w["sha256_prefix"] = url, sha_prefix
        monkeypatch.setattr(registry, "_data", lambda: d)
        registry.architectures.cache_clear()

    yield patch
    registry.architectures.cache_clear()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's `chromium` package) driven by Playwright with the system browser's
    executable; in CI (CI=true) a missing browser fails the test rather than skipping it."""
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if executable is None or sync_playwright is None:
        missing = "the chromium package" if executable is None else "playwright (pip)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{missing} is not installed; the README's test setup installs it")
        pytest.skip(f"{missing} is not installed (the README's test setup installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()
