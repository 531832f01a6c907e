"""The HTTP application (FastAPI): classify's records over HTTP, the same bytes `classify` writes.

    POST /v1/classify            one image (image/*, application/octet-stream) -> one record, as a line of
                                 `classify --format jsonl`; multipart/form-data `file` parts -> an array, as
                                 `classify --format json`
    POST /v1/embed               the same inputs -> embedding records, as `embed -o FILE.jsonl`
    POST /predictions/{model}    TorchServe's inference API: image bytes -> {label: probability}
    GET  /ping                   TorchServe's health check
    GET  /healthz /readyz        alive / weights loaded and warm
    GET  /metrics                Prometheus text (metrics.py)
    GET  /                       a page to try it (page.html)

Every request's images are decoded in a thread pool with classify's decoder and limits
(pipeline.prepare_bytes), then batched for the model thread (batching.py). Errors are JSON, never a 500 with
a traceback: `{"error": {"type", "message"}}` for a request that cannot be answered, the failure record
`{"path", "error": {"type", "message"}}` for an image that cannot be classified. docs/serve.md has the
contract.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Optional, Union

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..core.errors import UsageError, first_line
from ..core.records import Embedding, Failure, Record
from ..outputs.writers import JsonlWriter, JsonWriter, dumps
from ..run.pipeline import default_workers, prepare_bytes
from .batching import Batcher, ModelStopped, QueueFull
from .metrics import Metrics
from .model import Model

log = logging.getLogger("resnet_cli.serve")

JSON = "application/json"
# The page's only sources are itself and this server's API: no outside request, as the HTML report.
PAGE_CSP = ("default-src 'none'; img-src blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
FILE_FIELDS = ("file", "data")  # multipart parts read as images: ours, and TorchServe's name
RETRY_AFTER_S = 1
BODIES_IN_MEMORY = 4  # request bodies held at once: at most this many times --max-upload-mb of bytes


@dataclass(frozen=True)
class Limits:
    """The server's limits, as the command line gives them.

    max_batch      images per forward pass of the model thread (None: 4 of the network's chunks, 32 on a CPU)
    max_wait_ms    how long a partial chunk may wait for requests being decoded (batching.py)
    max_queue      images waiting for the model; a request that does not fit gets 503
    max_upload     bytes of a request's body; more gets 413. The bodies of all requests held at once (being read,
                   decoded, queued) are at most BODIES_IN_MEMORY times it; past that a request gets 503
    timeout_s      seconds from a request's arrival to its answer, reading its body included; past it 504, and
                   its queued work is dropped
    workers        decode threads (None: one per core)
    """

    max_batch: int | None = None
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_upload: int = 64 << 20
    timeout_s: float = 30.0
    workers: int | None = None


class ApiError(Exception):
    """A request that cannot be answered: HTTP `status` with `{"error": {"type", "message"}}`."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def error_response(status: int, kind: str, message: str, headers: dict | None = None) -> Response:
    body = dumps({"error": {"type": kind, "message": message}}) + "\n"
    return Response(body.encode("utf-8"), status_code=status, media_type=JSON, headers=headers)


def _header_text(value: str) -> str:
    """A header's value as the client meant it: HTTP carries bytes, which Starlette decodes as Latin-1; a file
    name sent as UTF-8 (curl -H 'X-Filename: été.jpg') is decoded as UTF-8 (bytes that are not: escaped, as a
    file name that is not UTF-8 is)."""
    return value.encode("latin-1").decode("utf-8", "surrogateescape")


def page_html() -> bytes:
    return resources.files(__package__).joinpath("page.html").read_bytes()


class Service:
    """What the endpoints share: the model, the decode threads, the batcher and the metrics."""

    def __init__(self, model: Model, limits: Limits, metrics: Metrics) -> None:
        self.model = model
        self.limits = limits
        self.metrics = metrics
        self.warm = False
        self.held = 0  # bytes of request bodies held now (`hold`)
        self.max_held = BODIES_IN_MEMORY * limits.max_upload
        self.pool = ThreadPoolExecutor(max_workers=limits.workers or default_workers(),
                                       thread_name_prefix="decode")
        self.batcher = Batcher(model.records, chunk=model.chunk, max_batch=limits.max_batch or 4 * model.chunk,
                               max_wait_s=limits.max_wait_ms / 1000, max_queue=limits.max_queue,
                               on_batch=metrics.batch_size.observe, on_depth=metrics.queue_depth.set,
                               first=self._warm_up)

    def _warm_up(self) -> None:
        """The model thread's first forward pass (before any request's); /readyz says when it is done."""
        try:
            self.model.warm_up()
        except Exception as exc:  # requests will say what is wrong; the log says it once
            log.error("warm-up failed: %s: %s", type(exc).__name__, first_line(exc))
            return
        self.warm = True

    @property
    def ready(self) -> bool:
        """Weights loaded, warm, and the model thread serving (it stops for good on an unexpected error)."""
        return self.warm and self.batcher.failed is None

    def close(self, timeout: float) -> None:
        """Run what is queued, waiting at most `timeout` seconds for the model thread; stop the decode threads."""
        self.batcher.close(timeout=max(0.0, timeout))
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- reading a request ------------------------------------------------------------------------------------
    def hold(self, request: Request, size: int) -> None:
        """Count `size` more bytes of `request`'s body as held until its answer (`release`). Raises ApiError 503
        when the bodies held would pass BODIES_IN_MEMORY times --max-upload-mb: memory stays bounded however
        many clients upload at once."""
        if self.held + size > self.max_held:
            raise ApiError(503, "queue_full", f"the server holds {self.held / 2**20:.1f} MB of request bodies "
                           f"already; at most {self.max_held / 2**20:g} MB ({BODIES_IN_MEMORY} x --max-upload-mb); "
                           "retry later", {"Retry-After": str(RETRY_AFTER_S)})
        self.held += size
        request.state.held = getattr(request.state, "held", 0) + size

    def release(self, request: Request) -> None:
        """The request is answered: its body's bytes no longer count (`hold`)."""
        self.held -= getattr(request.state, "held", 0)
        request.state.held = 0

    async def body(self, request: Request) -> bytearray:
        """The request's body, at most --max-upload-mb: a larger Content-Length is refused before anything is
        read, and a body that grows past the limit (chunked, or lying about its length) as soon as it does. The
        bytes are held (`hold`): a declared length at once, else as they arrive."""
        limit = self.limits.max_upload
        too_large = ApiError(413, "too_large", f"the body is over the {limit / 2**20:g} MB limit (--max-upload-mb)")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    raise too_large
            except ValueError:
                raise ApiError(400, "bad_request", "Content-Length is not a number") from None
            self.hold(request, int(length))
        declared = int(length) if length is not None else 0
        data = bytearray()
        async for chunk in request.stream():
            if len(data) + len(chunk) > limit:
                raise too_large
            if len(data) + len(chunk) > declared:
                self.hold(request, len(data) + len(chunk) - max(declared, len(data)))
            data += chunk
        return data  # no copy: the decoder reads a bytearray as it reads bytes

    async def inputs(self, request: Request, *, torchserve: bool = False) -> tuple[list[tuple[str, bytes]], bool]:
        """([(path, image bytes)], whether the body was multipart). Raises ApiError."""
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "multipart/form-data":
            body = await self.body(request)
            return await self._parts(request, body), True
        if not (media.startswith("image/") or media == "application/octet-stream" or torchserve):
            raise ApiError(415, "unsupported_media_type",
                           f"Content-Type {content_type or '(none)'!r}: send an image (image/*, "
                           "application/octet-stream) or multipart/form-data with `file` parts")
        body = await self.body(request)
        name = request.headers.get("x-filename")
        return [(_header_text(name) if name else "-", body)], False

    async def _parts(self, request: Request, body: bytearray) -> list[tuple[str, bytes]]:
        """The image parts of a multipart body, in upload order, parsed by Starlette (python-multipart)."""
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, receive).form(max_files=self.limits.max_queue, max_fields=100)
        except Exception as exc:  # malformed multipart: python-multipart's or Starlette's error
            detail = getattr(exc, "detail", None) or first_line(exc)
            raise ApiError(400, "bad_request", f"malformed multipart/form-data: {detail}") from None
        try:
            files = []
            for key, value in form.multi_items():
                if key in FILE_FIELDS and not isinstance(value, str):
                    files.append((value.filename or "-", await value.read()))
        finally:
            await form.close()
        if not files:
            raise ApiError(400, "bad_request", "multipart/form-data without a `file` part (curl -F file=@photo.jpg)")
        return files

    # -- answering --------------------------------------------------------------------------------------------
    async def records(self, files: list[tuple[str, bytes]], task, endpoint: str) -> list[Record]:
        """The records of `files` by `task`: decoded in the thread pool, then batched for the model. Raises
        ApiError (503 queue full, 504 past --timeout)."""
        loop = asyncio.get_running_loop()
        self.metrics.images.labels(endpoint).inc(len(files))
        pre = self.model.weights.preprocess

        async def work() -> list[Record]:
            self.batcher.decoding(+1)
            try:
                prepared = await asyncio.gather(*(loop.run_in_executor(self.pool, prepare_bytes, path, data, pre)
                                                  for path, data in files))
                if not any(p.error is None for p in prepared):
                    return self.model.records(task, prepared)  # failures only: nothing for the network
                future = self.batcher.submit(task, prepared)
            finally:
                self.batcher.decoding(-1)
            return await asyncio.wrap_future(future)

        try:
            records = await work()
        except ModelStopped as exc:
            raise ApiError(503, "unavailable", f"{exc}; the server must be restarted") from None
        except QueueFull as exc:
            raise ApiError(503, "queue_full", f"the server is busy ({exc}); retry later",
                           {"Retry-After": str(RETRY_AFTER_S)}) from None
        for rec in records:
            if isinstance(rec, Failure):
                self.metrics.failures.labels(rec.type).inc()
        return records


def _lines(records: list[Record], multipart: bool) -> bytes:
    """classify's bytes for `records`: the --format json document of a multipart upload, else one --format
    jsonl line."""
    out = io.BytesIO()
    writer = (JsonWriter if multipart else JsonlWriter)(out)
    for rec in records:
        writer.write(rec)
    writer.close()
    return out.getvalue()


def _status(records: list[Record]) -> int:
    """200, or 422 when an image failed (as classify exits 1): the body holds every record all the same."""
    return 422 if any(isinstance(r, Failure) for r in records) else 200


ENDPOINTS = {"/v1/classify", "/v1/embed", "/ping", "/healthz", "/readyz", "/metrics", "/"}


class MetricsMiddleware:
    """Counts every answer by endpoint and status and times it (an ASGI middleware, Starlette's pattern)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "/predictions" if path.startswith("/predictions/") else "other"
        start = time.perf_counter()
        status = 500

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}}}


def create_app(model: Union[Model, Callable[[], Model]], limits: Limits = Limits()) -> FastAPI:
    """The application answering with `model` (a loaded Model, or a function that loads one when the
    application starts: a Ray Serve replica's). Each application has its own metrics registry, batcher and
    decode threads, made when it starts and closed when it stops (its lifespan)."""
    metrics = Metrics()
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = model() if callable(model) else model
        service = Service(loaded, limits, metrics)
        holder["service"] = service
        try:
            yield
        finally:  # the whole shutdown within --timeout of its start: what the server's graceful wait left
            since = app.state.stopping_since
            service.close(limits.timeout_s - (time.monotonic() - since if since is not None else 0.0))

    app = FastAPI(title="resnet-classify", summary="Classify images with the ResNet family over HTTP",
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # their pages load from a CDN
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.stopping_since = None  # time.monotonic() of the signal that stops the server (server.Server)

    def service() -> Service:
        return holder["service"]

    async def guarded(endpoint: str, request: Request, answer) -> Response:
        """The endpoint's answer within --timeout of the request's arrival (reading its body included); past
        it 504. An ApiError as its JSON, anything unexpected as a one-line 500."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            try:  # wait_for, not asyncio.timeout: the package supports Python 3.10
                return await asyncio.wait_for(answer(), limits.timeout_s)
            except asyncio.TimeoutError:
                if loop.time() - start < limits.timeout_s:  # raised by the answer itself, not the deadline
                    raise
                raise ApiError(504, "timeout", f"no answer within {limits.timeout_s:g} s (--timeout); the "
                               "request's work is dropped") from None
            finally:
                service().release(request)
        except ApiError as exc:
            service().metrics.failures.labels(exc.kind).inc()
            return error_response(exc.status, exc.kind, exc.message, exc.headers)
        except ClientDisconnect:
            return error_response(400, "bad_request", "the client went away before the body was sent")
        except Exception as exc:  # a bug: one line in the log, a JSON 500, never a traceback
            log.error("%s: internal error: %s: %s", endpoint, type(exc).__name__, first_line(exc))
            service().metrics.failures.labels("internal_error").inc()
            return error_response(500, "internal_error", f"{type(exc).__name__}: {first_line(exc)}")

    def task_for(kind: str, topk: int | None):
        try:
            return service().model.task(kind, topk)
        except UsageError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None

    @app.post("/v1/classify", openapi_extra=IMAGE_BODY, response_class=Response,
              summary="Classify one image, or several as multipart/form-data `file` parts")
    async def classify(request: Request, topk: Optional[int] = Query(
            None, ge=1, description="How many classes (default: the server's --topk)")) -> Response:
        """One image in the body -> its record, exactly the line `classify --format jsonl` writes for the file
        (`path`: the X-Filename header, else "-"). multipart/form-data with `file` parts -> an array of records
        in upload order, as `classify --format json` writes it. 422 when an image failed: its failure record."""
        async def answer() -> Response:
            s = service()
            task = task_for("classify", topk)
            files, multipart = await s.inputs(request)
            records = await s.records(files, task, "/v1/classify")
            return Response(_lines(records, multipart), status_code=_status(records), media_type=JSON)

        return await guarded("/v1/classify", request, answer)

    @app.post("/v1/embed", openapi_extra=IMAGE_BODY, response_class=Response,
              summary="The embedding of one image, or of several as multipart/form-data `file` parts")
    async def embed(request: Request, normalize: bool = Query(
            False, description="Scale each vector to unit length (L2), as embed --normalize")) -> Response:
        """The records `embed -o FILE.jsonl` writes: `{"path", "arch", "weights", "embedding"}` or a failure;
        one line for one image, an array for multipart."""
        async def answer() -> Response:
            s = service()
            files, multipart = await s.inputs(request)
            records = await s.records(files, task_for("embed", None), "/v1/embed")
            if normalize:
                records = [r.normalized() if isinstance(r, Embedding) else r for r in records]
            return Response(_lines(records, multipart), status_code=_status(records), media_type=JSON)

        return await guarded("/v1/embed", request, answer)

    @app.put("/predictions/{model_name}", openapi_extra=IMAGE_BODY, response_class=Response,
             operation_id="predictions_put", summary="TorchServe's inference API, as `curl -T` sends it")
    @app.post("/predictions/{model_name}", openapi_extra=IMAGE_BODY, response_class=Response,
              summary="TorchServe's inference API: image bytes -> {label: probability}")
    async def predictions(model_name: str, request: Request) -> Response:
        """TorchServe's image classifier answer: the top-k as `{label: probability}`, most probable first.
        `model_name` is the architecture (`resnet50`). PUT as well as POST (`curl -T kitten.jpg`, as TorchServe's
        examples send it). A bad image: 422 and its failure record."""
        async def answer() -> Response:
            s = service()
            if model_name != s.model.name:
                raise ApiError(404, "model_not_found", f"model {model_name!r} is not served here; this server "
                               f"serves {s.model.name!r}")
            files, _ = await s.inputs(request, torchserve=True)
            if len(files) > 1:  # TorchServe's answer has room for one image: never drop the others silently
                raise ApiError(400, "bad_request", f"/predictions takes one image; this request has {len(files)} "
                               "(use /v1/classify for several)")
            records = await s.records(files, s.model.classify, "/predictions")
            (rec,) = records
            if isinstance(rec, Failure):
                return Response(_lines(records, False), status_code=422, media_type=JSON)
            body = dumps({p.label: p.probability for p in rec.topk}) + "\n"
            return Response(body.encode("utf-8"), media_type=JSON)

        return await guarded("/predictions", request, answer)

    @app.head("/ping", include_in_schema=False)  # load balancers' probes may send HEAD
    @app.get("/ping", summary="TorchServe's health check")
    async def ping() -> Response:
        ready = service().ready
        body = dumps({"status": "Healthy" if ready else "Unhealthy"}) + "\n"
        return Response(body.encode(), status_code=200 if ready else 503, media_type=JSON)

    @app.head("/healthz", include_in_schema=False)  # load balancers' probes may send HEAD
    @app.get("/healthz", summary="Alive")
    async def healthz() -> Response:
        return Response(b'{"status": "ok"}\n', media_type=JSON)

    @app.head("/readyz", include_in_schema=False)  # load balancers' probes may send HEAD
    @app.get("/readyz", summary="Weights loaded and warm")
    async def readyz() -> Response:
        s = service()
        w = s.model.weights
        state = "ready" if s.ready else "warming up" if s.batcher.failed is None else "model thread stopped"
        body = {"status": state, "arch": w.arch.name, "weights": w.name,
                "preprocess": {"resize": w.preprocess.resize, "crop": w.preprocess.crop}}
        return Response((dumps(body) + "\n").encode("utf-8"), status_code=200 if s.ready else 503,
                        media_type=JSON)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(page_html(), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        where = ".".join(str(x) for x in errors[0].get("loc", ())[1:]) if errors else ""
        why = errors[0].get("msg", "invalid") if errors else "invalid"
        return error_response(400, "bad_request", f"{where}: {why}" if where else why)

    return app
