"""resnet-classify: ImageNet classification with the ResNet family, from the command line and from Python.

    import resnet_cli
    for record in resnet_cli.classify(["photos/"], arch="resnet50"):
        print(record["path"], record["topk"][0]["label"])

`classify`, `embed` and `Classifier` (api.py; docs/python.md) are imported on first use: `import resnet_cli`
imports neither torch nor the pipeline, so the command line's `--help` stays instant.
"""

from __future__ import annotations

import importlib

from .core import __version__ as __version__
from .core.errors import InputError, ResnetCliError, UsageError, WeightsUnavailable

__all__ = ["Classifier", "InputError", "ResnetCliError", "UsageError", "WeightsUnavailable", "classify", "embed"]

_API = ("Classifier", "classify", "embed")


def __getattr__(name: str):
    """`classify`, `embed` and `Classifier` from api.py, imported on first use (PEP 562). Their annotated
    signatures are api.py's: `from resnet_cli.api import classify` gives type checkers the same functions."""
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
