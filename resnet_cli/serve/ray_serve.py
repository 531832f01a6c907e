"""`serve --engine ray`: the same application as a Ray Serve deployment, its replicas across a cluster.

Each replica builds the very application `serve` runs alone (app.create_app: endpoints, decoder, batcher,
metrics) and loads the network itself (model.load), so its answers are the same bytes. Ray Serve's HTTP proxy
listens on --host:--port of the head node (one proxy: an address that does not depend on where replicas land)
and spreads requests over the --replicas; each replica batches what it is given.
/metrics answers with the metrics of the replica that took the request (Ray's own metrics export covers the
cluster).

The driver (this process) deploys the application, says where it listens, and waits for SIGTERM or SIGINT: then
it deletes the application, Ray Serve letting each replica finish its requests within --timeout, and exits 0
(a second signal exits at once).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from ..core.errors import PROG, UsageError, first_line
from .app import Limits, create_app
from .model import ModelSettings, load
from .server import STOPPING, _say

APP_NAME = "resnet-classify"


class Replica:
    """One replica: the application of `settings` and `limits`, its network loaded when it starts (Ray Serve
    calls `__serve_build_asgi_app__` on the replica, after the constructor)."""

    def __init__(self, settings: ModelSettings, limits: Limits) -> None:
        self.settings = settings
        self.limits = limits

    def __serve_build_asgi_app__(self):
        return create_app(lambda: load(self.settings), self.limits)


def deployment(settings: ModelSettings, limits: Limits, *, replicas: int, gpus: bool):
    """The bound Ray Serve application: `replicas` copies of Replica, one GPU each when `gpus`."""
    from ray import serve

    options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    cls = serve.deployment(serve.ingress()(Replica), name="resnet_classify", num_replicas=replicas,
                           ray_actor_options=options, graceful_shutdown_timeout_s=limits.timeout_s,
                           max_ongoing_requests=max(limits.max_queue, 1))
    return cls.bind(settings, limits)


def run(settings: ModelSettings, limits: Limits, *, host: str, port: int, replicas: int = 1,
        address: str | None = None, quiet: bool = False) -> int:
    """Deploy on the cluster at `address` (else RAY_ADDRESS, else a local Ray of this machine's cores) and serve
    until a signal (module docstring). Returns the exit code. Raises UsageError."""
    from ..run.engines.ray import _connect, import_ray

    if port == 0:
        raise UsageError("--engine ray needs a port (Ray Serve's proxy listens on the one it is given)")
    settings.model.resolve()  # an unknown architecture or missing file fails here, before Ray starts
    ray = import_ray()
    try:
        from ray import serve
    except ImportError:
        raise UsageError("--engine ray needs Ray Serve: pip install 'resnet-classify[ray]'") from None
    started = _connect(ray, address, os.cpu_count() or 1)
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            _say(f"{PROG}: interrupted\n")
            os._exit(128 + signum)
        stop.set()
        _say(STOPPING)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        device = settings.run.device
        gpus = device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        try:
            serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
            serve.run(deployment(settings, limits, replicas=replicas, gpus=gpus), name=APP_NAME, route_prefix="/")
        except Exception as exc:  # a replica that cannot load the weights, a port Ray cannot have
            raise UsageError(f"Ray Serve could not start the application: {first_line(exc)}") from None
        if not quiet:
            shown = f"[{host}]" if ":" in host else host
            _say(f"{PROG}: serving {settings.model.resolve().arch.name} on http://{shown}:{port} with Ray Serve "
                 f"({replicas} replica{'s' if replicas != 1 else ''})\n")
        while not stop.wait(0.5):
            pass
        serve.delete(APP_NAME)  # each replica finishes its requests (graceful_shutdown_timeout_s = --timeout)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if started:
            ray.shutdown()
    return 0
