"""The server's Prometheus metrics, in a registry of each application's own (prometheus-client).

    resnet_classify_requests_total{endpoint, status}       requests answered, by endpoint and HTTP status
    resnet_classify_failures_total{type}                   failure records by their type (not_an_image, ...),
                                                           and refused requests by why (queue_full, timeout,
                                                           too_large, bad_request, unsupported_media_type)
    resnet_classify_images_total{endpoint}                 images received
    resnet_classify_request_duration_seconds{endpoint}     latency, from the request's arrival to its answer
    resnet_classify_batch_size                             images per forward pass of the model thread
    resnet_classify_queue_depth                            images waiting for the model thread
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512)


class Metrics:
    """One application's metrics (module docstring), in a registry of its own so that several servers (tests,
    replicas) never share counts."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("resnet_classify_requests", "Requests answered, by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=r)
        self.failures = Counter("resnet_classify_failures", "Failure records by type, and refused requests by "
                                "why.", ["type"], registry=r)
        self.images = Counter("resnet_classify_images", "Images received.", ["endpoint"], registry=r)
        self.latency = Histogram("resnet_classify_request_duration_seconds", "Seconds from a request's arrival "
                                 "to its answer.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("resnet_classify_batch_size", "Images per forward pass.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("resnet_classify_queue_depth", "Images waiting for the model.", registry=r)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
