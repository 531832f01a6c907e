"""`resnet-classify serve`: classify's records over HTTP (the serve layer has the server; docs/serve.md).

    options --> serve.model.ModelSettings + serve.app.Limits --> listen (a busy port fails before loading)
        --> serve.model.load --> serve.app.create_app --> serve.server.run (until SIGTERM/SIGINT)
    --engine ray: the same application as a Ray Serve deployment (serve.ray_serve)
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ...core.errors import UsageError
from ...models.devices import Precision
from ...run.job import Engine, ModelOptions, RunOptions
from ..options import (ArchOpt, CropOpt, DeviceOpt, EngineOpt, LabelsOpt, OfflineOpt, PrecisionOpt, RayAddressOpt,
                       ResizeOpt, TopkOpt, WeightsOpt)

HostOpt = Annotated[str, typer.Option(
    "--host", metavar="HOST", help="The address to listen on (0.0.0.0: every interface; mind who can reach it).")]
PortOpt = Annotated[int, typer.Option("--port", "-p", min=0, max=65535, metavar="PORT",
                                      help="The port to listen on (0: a free one, printed at start).")]
MaxBatchOpt = Annotated[Optional[int], typer.Option(
    "--max-batch", min=1, metavar="N", show_default=False,
    help="Most images per forward pass, gathered from concurrent requests (never changes an answer). Default: "
    "32 on a CPU, 256 on a GPU.")]
MaxWaitOpt = Annotated[float, typer.Option(
    "--max-wait-ms", min=0, metavar="MS",
    help="How long a partly filled batch may wait for requests still being decoded; a lone request never "
    "waits.")]
MaxQueueOpt = Annotated[int, typer.Option(
    "--max-queue", min=1, metavar="N", help="Most images waiting for the network; more get 503 with Retry-After.")]
MaxUploadOpt = Annotated[float, typer.Option(
    "--max-upload-mb", min=0, metavar="MB", help="Largest request body; a larger one gets 413, unread.")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=0, metavar="SECONDS",
    help="Longest a request may take (past it: 504, its work dropped); also how long a shutdown waits for "
    "the requests in flight.")]
ReplicasOpt = Annotated[Optional[int], typer.Option(
    "--replicas", min=1, metavar="N", show_default=False,
    help="With --engine ray: copies of the model across the cluster (default: 1).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No access log; of the start-up lines only the address served.")]


def command(
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    labels: LabelsOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    topk: TopkOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    max_batch: MaxBatchOpt = None,
    max_wait_ms: MaxWaitOpt = 10.0,
    max_queue: MaxQueueOpt = 256,
    max_upload_mb: MaxUploadOpt = 64.0,
    timeout: TimeoutOpt = 30.0,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    replicas: ReplicasOpt = None,
) -> None:
    """Serve classify's answers over HTTP: POST an image to /v1/classify, or open the page at /."""
    from ...core.console import eprint

    if max_upload_mb <= 0:
        raise UsageError("--max-upload-mb must be more than 0")
    if timeout <= 0:
        raise UsageError("--timeout must be more than 0")
    if engine is not Engine.ray and (ray_address or replicas):
        raise UsageError(f"{'--ray-address' if ray_address else '--replicas'} needs --engine ray")
    from ...serve.app import Limits
    from ...serve.model import ModelSettings

    settings = ModelSettings(ModelOptions(arch, weights, resize, crop, labels),
                             RunOptions(device=device, precision=precision, offline=offline, quiet=quiet), topk)
    limits = Limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                    max_upload=int(max_upload_mb * 2**20), timeout_s=timeout)
    if engine is Engine.ray:
        from ...serve import ray_serve

        raise typer.Exit(ray_serve.run(settings, limits, host=host, port=port, replicas=replicas or 1,
                                       address=ray_address, quiet=quiet))
    from ...serve import server
    from ...serve.app import create_app
    from ...serve.model import load

    sock = server.listen(host, port)  # a busy port fails now, before the weights load
    model = load(settings)
    app = create_app(model, limits)
    w = model.weights  # printed even with --quiet: with --port 0 it is the only way to learn the port
    eprint(f"serving {w.arch.name} ({w.name}) on {server.url_of(sock)}  (the page: {server.url_of(sock)}/, "
           "the API's schema: /openapi.json)")
    server.run(app, sock, timeout_s=timeout, quiet=quiet)
