"""The serve tests' shared fixtures: the seeded resnet18, loaded once, and a server of it for each module."""

from __future__ import annotations

import pytest

from resnet_cli.serve.model import Model


@pytest.fixture(scope="session")
def resnet18(checkpoint) -> Model:
    """The seeded resnet18 checkpoint, loaded once for every serve test (servers share it: a Model is only
    ever run by one batcher thread at a time per server, and the tests' servers take turns)."""
    from resnet_cli.run.job import ModelOptions
    from resnet_cli.serve.model import ModelSettings, load

    return load(ModelSettings(ModelOptions("resnet18", str(checkpoint("resnet18")))))


@pytest.fixture(scope="module")
def server(resnet18):
    """A server of the seeded resnet18 with the default limits, on a free loopback port, for one test module."""
    from servers import serve

    running = serve(resnet18)
    yield running
    running.stop()
