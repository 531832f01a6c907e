"""explain's files: the heat-map overlay over the photo, the raw map, and their names.

The overlay is the picture as the user knows it (records.View: orientation applied, at most 1024 px on the
longer side) with the map laid where the center crop came from: inside the crop, half photo and half heat map
in the jet colours pytorch-grad-cam's `show_cam_on_image` uses (blue: nothing, red: where the class was found);
outside it, the photo dimmed to a third, since the network never saw that part.
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
from PIL import Image

from .records import View

OVERLAY_SIZE = 1024  # longest side of the picture overlays are drawn on
OUTSIDE = 1 / 3  # brightness left to what the network did not see
HEAT = 0.5  # share of the heat map in the blend inside the crop


def jet(values: np.ndarray) -> np.ndarray:
    """(..., ) floats in [0, 1] -> (..., 3) uint8 RGB, the jet colour map (OpenCV's COLORMAP_JET shape)."""
    x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def render(view: View, cam: np.ndarray) -> Image.Image:
    """The overlay of a (crop, crop) map in [0, 1] on its picture."""
    photo = np.asarray(view.image.convert("RGB"), dtype=np.float32)
    height, width = photo.shape[:2]
    out = photo * OUTSIDE
    left, top, right, bottom = view.box
    box_w, box_h = max(1, round(right - left)), max(1, round(bottom - top))
    heat = np.asarray(Image.fromarray(jet(cam)).resize((box_w, box_h), Image.Resampling.BILINEAR),
                      dtype=np.float32)
    x0, y0 = round(left), round(top)
    # The part of the box inside the picture (a padded crop reaches past its edges).
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + box_w, width), min(y0 + box_h, height)
    if ix0 < ix1 and iy0 < iy1:
        inside = photo[iy0:iy1, ix0:ix1]
        out[iy0:iy1, ix0:ix1] = (1 - HEAT) * inside + HEAT * heat[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


_UNSAFE = re.compile(r"[^\w.+-]+")


class Names:
    """One file stem per input, named after it, never twice in a run: `a/dog.jpg` -> `dog`, then `b/dog.jpg`
    -> `dog-2` (compared without case, for case-insensitive file systems). Names come from the input's base
    name (a URL's last path segment), with characters that are unsafe in file names replaced by `_`."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def __call__(self, path: str) -> str:
        base = path.split("?", 1)[0].split("#", 1)[0] if "://" in path else path
        base = os.path.basename(base.rstrip("/\\")) or "image"
        stem = os.path.splitext(base)[0] or base
        stem = _UNSAFE.sub("_", stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")).strip("._")
        stem = (stem or "image")[:120]
        name, n = stem, 1
        while name.lower() in self._taken:
            n += 1
            name = f"{stem}-{n}"
        self._taken.add(name.lower())
        return name


def write_atomically(path: str, save) -> None:
    """Call `save(file)` on a temporary file beside `path`, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            save(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_overlay(image: Image.Image, path: str) -> None:
    # compress_level 1: a third of the default's encoding time for files about 15% larger (measured on the
    # sample photos), which keeps the writing off the run's critical path.
    write_atomically(path, lambda f: image.save(f, format="PNG", compress_level=1))


def save_map(cam: np.ndarray, path: str) -> None:
    write_atomically(path, lambda f: np.save(f, np.asarray(cam, dtype=np.float32)))
