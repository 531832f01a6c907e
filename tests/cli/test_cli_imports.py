"""torchvision is the tests' reference, never a dependency of the tool: the real commands, run in a fresh
interpreter under `python -X importtime`, import no module named torchvision or torchvision.*."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from checkpoints import PHOTOS, ROOT

PHOTO = next(p for p in PHOTOS if p.name == "chelsea.png")


def imported_modules(stderr: str) -> list[str]:
    """Module names from `-X importtime` lines: `import time: self [us] | cumulative | <indent>name`."""
    names = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":  # the header line
                names.append(name)
    return names


def is_torchvision(name: str) -> bool:
    return name == "torchvision" or name.startswith("torchvision.")


def test_the_importtime_parser_sees_nested_and_dotted_modules():
    """The check below can fail: it recognises torchvision however deep it is imported."""
    sample = ("import time: self [us] | cumulative | imported package\n"
              "import time:       120 |        120 |       torchvision.models.resnet\n"
              "import time:      5000 |       9000 |   torchvision\n"
              "import time:        10 |         10 | torchvisionary\n")
    assert imported_modules(sample) == ["torchvision.models.resnet", "torchvision", "torchvisionary"]
    assert [is_torchvision(n) for n in imported_modules(sample)] == [True, True, False]


def _run_importtime(*argv: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "resnet_cli", *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=150)
    return res, imported_modules(res.stderr)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["classify", "models", "arch"])
def test_no_torchvision_is_imported(command, checkpoint):
    if command == "classify":
        res, modules = _run_importtime(str(PHOTO), "--arch", "resnet18", "--weights", str(checkpoint("resnet18")),
                                       "-f", "jsonl")
        assert res.returncode == 0, res.stderr[-2000:]
        rec = json.loads(res.stdout)
        assert rec["path"] == str(PHOTO) and len(rec["topk"]) == 5
        assert "torch" in modules  # the importtime lines were read, torch among them: the check can fail
    elif command == "models":
        res, modules = _run_importtime("models", "--format", "json")
        assert res.returncode == 0, res.stderr[-2000:]
        assert "resnet18" in [m["arch"] for m in json.loads(res.stdout)]
    else:
        res, modules = _run_importtime("arch", "resnet18")
        assert res.returncode == 0, res.stderr[-2000:]
        assert "torch" in modules
    assert len(modules) > 50 and any(m.startswith("resnet_cli.") for m in modules)  # the start-up was traced
    assert not [m for m in modules if is_torchvision(m)]
