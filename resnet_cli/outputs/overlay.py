"""explain's files: the heat-map overlay over the photo, the raw map, and their names.

The overlay is the picture as the user knows it (records.View: orientation applied, at most 1024 px on the
longer side) with the map laid where the center crop came from: inside the crop, half photo and half heat map
in the jet colours pytorch-grad-cam's `show_cam_on_image` uses (blue: nothing, red: where the class was found);
outside it, the photo dimmed to a third, since the network never saw that part.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

from ..core.records import View
from ..core.files import AtomicFile, cut_bytes

STEM_BYTES = 120  # a name's stem at most, in UTF-8 bytes: with "-N", ".png" and a temporary name's 14 bytes, far
# under the 255 bytes file systems allow
OVERLAY_SIZE = 1024  # longest side of the picture overlays are drawn on
OUTSIDE = 1 / 3  # brightness left to what the network did not see
HEAT = 0.5  # share of the heat map in the blend inside the crop


def jet(values: np.ndarray) -> np.ndarray:
    """(..., ) floats in [0, 1] -> (..., 3) uint8 RGB, the jet colour map (OpenCV's COLORMAP_JET shape)."""
    x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def render(view: View, cam: np.ndarray) -> Image.Image:
    """The overlay of a (crop, crop) map in [0, 1] on its picture (8-bit arithmetic in Pillow: a few
    milliseconds for a 1024 px picture)."""
    photo = view.image.convert("RGB")
    out = photo.point([round(v * OUTSIDE) for v in range(256)] * 3)
    left, top, right, bottom = view.box
    box_w, box_h = max(1, round(right - left)), max(1, round(bottom - top))
    heat = Image.fromarray(jet(cam)).resize((box_w, box_h), Image.Resampling.BILINEAR)
    x0, y0 = round(left), round(top)
    # The part of the box inside the picture (a padded crop reaches past its edges).
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + box_w, photo.width), min(y0 + box_h, photo.height)
    if ix0 < ix1 and iy0 < iy1:
        inside = photo.crop((ix0, iy0, ix1, iy1))
        heat = heat.crop((ix0 - x0, iy0 - y0, ix1 - x0, iy1 - y0))
        out.paste(Image.blend(inside, heat, HEAT), (ix0, iy0))
    return out


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
        stem = cut_bytes(stem or "image", STEM_BYTES)
        name, n = stem, 1
        while name.lower() in self._taken:
            n += 1
            name = f"{stem}-{n}"
        self._taken.add(name.lower())
        return name


def save_overlay(image: Image.Image, path: str) -> None:
    # compress_level 1: 68 ms for a 1024x768 photo's overlay where the default (6) takes 111 ms, for a file 9%
    # larger (measured on a sample photo); encoding is most of what an overlay costs.
    _write_atomically(path, lambda f: image.save(f, format="PNG", compress_level=1))


def save_map(cam: np.ndarray, path: str) -> None:
    _write_atomically(path, lambda f: np.save(f, np.asarray(cam, dtype=np.float32)))


def _write_atomically(path: str, save) -> None:
    """`save(file)` into writers.AtomicFile: the file appears at `path` whole, or not at all. The name is the
    tool's: a symlink (or a folder) already at `path` is refused with OSError, never followed."""
    atomic = AtomicFile(path, follow=False)
    try:
        save(atomic.file)
        atomic.commit()
    except BaseException:
        atomic.abort()
        raise
