"""Where an input's bytes come from, chosen by its scheme, and the one place `--offline` is decided.

    http://, https://        net.fetch_image_bytes (bounded in time and size)
    s3://, gs://, gcs://     cloud.read_object (pyarrow)
    anything else            a local file, opened by images.open_local

With `offline`, a network input is a failure record (download_failed) and no request leaves the process, in
every engine: listing (`sources`) and reading both ask `Network.allows`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import cloud, net
from ..core.errors import DOWNLOAD_FAILED, OFFLINE_REASON, InputError

HTTP, CLOUD, LOCAL = "http", "cloud", "local"


def scheme(path: str) -> str:
    if net.is_url(path):
        return HTTP
    if cloud.is_cloud(path):
        return CLOUD
    return LOCAL


@dataclass(frozen=True)
class Network:
    """The run's network policy. Small and picklable: the Ray engine ships it to its workers."""

    offline: bool = False

    def allows(self, path: str) -> bool:
        return not self.offline or scheme(path) == LOCAL

    def refusal(self) -> InputError:
        return InputError(DOWNLOAD_FAILED, f"not fetched: {OFFLINE_REASON}")

    def read(self, path: str) -> bytes | None:
        """The bytes of a network input (raising InputError when they cannot be had), or None for a local path,
        which the decoder opens itself."""
        kind = scheme(path)
        if kind == LOCAL:
            return None
        if self.offline:
            raise self.refusal()
        if kind == HTTP:
            return net.fetch_image_bytes(path)
        return cloud.read_object(path, net.MAX_URL_BYTES)
