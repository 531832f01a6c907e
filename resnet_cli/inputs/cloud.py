"""Object stores (`s3://`, `gs://`, `gcs://`) through pyarrow's file systems, the ones Ray Data uses.

pyarrow is an optional extra (`pip install 'resnet-classify[cloud]'`, also brought by `[ray]`). Credentials
come from the environment as pyarrow reads them (AWS_* variables, ~/.aws, Google's application default
credentials). An object is read whole, with the size limit of image URLs; a URI naming a prefix is listed
like a folder: sorted by name, depth-first, image names only, `--recursive` to descend.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

from ..core import errors as E
from ..core.errors import InputError, UsageError, first_line

SCHEMES = ("s3://", "gs://", "gcs://")
INSTALL_HINT = "pip install 'resnet-classify[cloud]'"


def is_cloud(path: str) -> bool:
    return path.startswith(SCHEMES)


def available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def require(uri: str) -> None:
    """A usage error naming the pip command, before any work starts, when pyarrow is missing."""
    if not available():
        raise UsageError(f"{uri}: reading s3:// and gs:// needs pyarrow: {INSTALL_HINT}")


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for `uri`. Tests point this at a local folder."""
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(uri)


def list_uri(uri: str, recursive: bool, is_image_name) -> Iterator[tuple[str, InputError | None]]:
    """(uri, error) for the object `uri` names, or for each image object under the prefix it names."""
    if not available():
        yield uri, InputError(E.DOWNLOAD_FAILED, f"s3:// and gs:// need pyarrow: {INSTALL_HINT}")
        return
    from pyarrow import fs as pafs

    try:
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            yield uri, None
            return
        if info.type == pafs.FileType.NotFound:
            yield uri, InputError(E.NOT_FOUND, "no such object or prefix")
            return
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    except Exception as exc:  # credentials, network, an unknown bucket: one failure record, not a crash
        yield uri, InputError(E.UNREADABLE_FOLDER, f"cannot list: {first_line(exc)}")
        return
    base = path.rstrip("/")
    found = []
    for item in infos:
        rel = item.path[len(base):].lstrip("/")
        if item.type == pafs.FileType.File and is_image_name(rel):
            found.append(rel.split("/"))
    # Sorting the path components puts a sub-prefix's objects where its name sorts, depth-first, as a local
    # folder is ordered.
    for parts in sorted(found):
        yield uri.rstrip("/") + "/" + "/".join(parts), None


def read_object(uri: str, max_bytes: int) -> bytes:
    if not available():
        raise InputError(E.DOWNLOAD_FAILED, f"s3:// and gs:// need pyarrow: {INSTALL_HINT}")
    try:
        fs, key = filesystem(uri)
        with fs.open_input_stream(key) as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(E.NOT_FOUND, "no such object") from None
    except PermissionError:
        raise InputError(E.PERMISSION_DENIED, "permission denied") from None
    except Exception as exc:
        raise InputError(E.DOWNLOAD_FAILED, f"cannot read: {first_line(exc)}") from None
    if len(data) > max_bytes:
        raise InputError(E.TOO_LARGE, f"larger than {max_bytes:,} bytes")
    return data
