"""Preprocessing identical to torchvision's `weights.transforms()` (ImageClassification), without torchvision.

torchvision, for a PIL image: resize the shorter side to `resize` (PIL bilinear, which always antialiases;
the longer side becomes int(resize * long / short)), center-crop `crop` x `crop` (zero padding where the image
is smaller), to a uint8 CHW tensor, divide by 255, subtract the mean, divide by the std.

Here the PIL half (resize + crop) runs in the decode workers and hands over `crop*crop*3` bytes; the tensor half
(`normalize`) runs once per batch on the whole stack, with the same float32 operations in the same order, so the
result is bit-identical to torchvision's (tests/models/test_preprocess.py proves it).
"""

from __future__ import annotations

from PIL import Image

from .registry import Preprocess

_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

# Where the full resize would exceed this many pixels (only extreme strips: a 1x5000 image resizes to
# 256x1,280,000, about 1 GB), resample just the window the crop keeps, with PIL's `box`. Its filter taps are
# the same but computed from a shifted origin, so float rounding can move a few pixels by one level of 255:
# top-5 is unaffected, and every image under the limit stays bit-identical to torchvision.
MAX_RESIZED_PIXELS = 1 << 24


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's output size for resizing the shorter side to `size` (F._compute_resized_output_size)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _crop_origin(full: int, crop: int) -> int:
    """Top-left of torchvision's center crop along one axis; negative where it pads (PIL fills with zeros)."""
    if crop > full:
        return -((crop - full) // 2)
    return int(round((full - crop) / 2.0))


def crop_box(width: int, height: int, pre: Preprocess) -> tuple[float, float, float, float]:
    """Where the center crop of `resize_and_crop` lies in the original image: (left, top, right, bottom) in its
    pixels (past its edges where the crop is padded)."""
    new_w, new_h = resized_size(width, height, pre.resize)
    left, top = _crop_origin(new_w, pre.crop), _crop_origin(new_h, pre.crop)
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + pre.crop) * sx, (top + pre.crop) * sy)


def view_of(img: Image.Image, pre: Preprocess, size: int):
    """records.View of a decoded image: a copy at most `size` pixels on its longer side, and the crop's box."""
    from ..core.records import View

    width, height = img.size
    scale = min(1.0, size / max(width, height))
    view = img
    if scale < 1.0:
        view = img.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                          Image.Resampling.BILINEAR, reducing_gap=2.0)
    sx, sy = view.width / width, view.height / height
    left, top, right, bottom = crop_box(width, height, pre)
    return View(view, (left * sx, top * sy, right * sx, bottom * sy))


def resize_and_crop(img: Image.Image, pre: Preprocess) -> Image.Image:
    """The PIL half of `weights.transforms()`: an RGB image of `pre.crop` x `pre.crop`."""
    width, height = img.size
    new_w, new_h = resized_size(width, height, pre.resize)
    crop = pre.crop
    left, top = _crop_origin(new_w, crop), _crop_origin(new_h, crop)
    resample = _PIL_FILTERS[pre.interpolation]
    if (new_w, new_h) == (width, height):
        resized = img  # torchvision skips the resize when the size already matches
    elif new_w * new_h > MAX_RESIZED_PIXELS and crop <= min(new_w, new_h):
        # Output pixel (x, y) of the full resize samples the source around ((x + 0.5) * sx, (y + 0.5) * sy):
        # a box from (left * sx, top * sy) at the same scale samples the same points.
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        return img.resize((crop, crop), resample, box=box)
    else:
        resized = img.resize((new_w, new_h), resample)
    if (left, top) == (0, 0) and resized.size == (crop, crop):
        return resized
    return resized.crop((left, top, left + crop, top + crop))


def normalize(batch_hwc_uint8, pre: Preprocess, dtype=None):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, channels_last in memory, exactly as torchvision computes it:
    `x.float() / 255`, then `x.sub_(mean).div_(std)`. `dtype` casts the result afterwards (bf16, fp16)."""
    import torch

    x = batch_hwc_uint8.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    mean = torch.as_tensor(pre.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(pre.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x.sub_(mean).div_(std)
    return x if dtype is None or dtype == torch.float32 else x.to(dtype)
