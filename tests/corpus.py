"""A generated corpus of every bad and odd file a real photo folder holds, with what each must produce."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from pathlib import Path

from PIL import Image

from checkpoints import PHOTOS

OK = "ok"


# A colour photo (not camera.png, which is greyscale): a swapped channel or an inverted CMYK must be able to show.
COLOUR_PHOTO = next(p for p in PHOTOS if p.name == "chelsea.png")


def _photo(size=(320, 240)) -> Image.Image:
    return Image.open(COLOUR_PHOTO).convert("RGB").resize(size)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header for 1.6 gigapixels with a few bytes of data: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    img = _photo((320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return _jpeg(img, exif=exif.tobytes())


def make_corpus(folder: Path) -> dict[str, str]:
    """Write the corpus into `folder`; returns {file name: expected error type, or OK}."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    jpeg = _jpeg(photo)
    png = _png(photo)
    files: dict[str, tuple[bytes, str]] = {
        # bad
        "empty.jpg": (b"", "empty_file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "header_only.png": (png[:30], "corrupt"),
        "notes.jpg": (b"shopping list: milk, eggs\n" * 20, "not_an_image"),
        "page.png": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not_an_image"),
        "drawing.png": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "unsupported_format"),
        "iphone.heic": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, "unsupported_format"),
        "bomb.png": (bomb_png(), "decompression_bomb"),  # over twice the limit: Pillow itself refuses it
        "bomb_100mp.png": (bomb_png(10_000, 10_000), "decompression_bomb"),  # over the limit: our header check
        "garbage.webp": (random.Random(0).randbytes(2048), "not_an_image"),
        # odd but valid
        "tiny_1x1.png": (_png(_photo((1, 1))), OK),
        "strip_1x3000.png": (_png(_photo((1, 3000))), OK),
        "strip_3000x2.jpg": (_jpeg(_photo((3000, 2))), OK),
        "cmyk.jpg": (_jpeg(photo.convert("CMYK")), OK),
        "grey_L.png": (_png(photo.convert("L")), OK),
        "grey_alpha_LA.png": (_png(photo.convert("LA")), OK),
        "palette_P.png": (_png(photo.convert("P")), OK),
        "rgba.png": (_png(photo.convert("RGBA")), OK),
        "exif_rotated.jpg": (exif_rotated_jpeg(), OK),
        "trailing_bytes.jpg": (jpeg + b"\0garbage after the end marker" * 10, OK),
    }
    # 16-bit greyscale: the photo's grey levels times 257, so 8 bits of it are exactly the L image.
    grey = photo.convert("L")
    g16 = grey.convert("I").point(lambda v: v * 257).convert("I;16")
    files["grey16.png"] = (_png(g16), OK)
    # palette with transparency
    pt = photo.convert("P")
    buf = io.BytesIO()
    pt.save(buf, "PNG", transparency=0)
    files["palette_transparent.png"] = (buf.getvalue(), OK)
    # animated GIF: the first frame is the photo, the second is black
    buf = io.BytesIO()
    photo.save(buf, "GIF", save_all=True, append_images=[Image.new("RGB", photo.size)], duration=100, loop=0)
    files["animated.gif"] = (buf.getvalue(), OK)
    # multi-page TIFF
    buf = io.BytesIO()
    photo.save(buf, "TIFF", save_all=True, append_images=[Image.new("RGB", photo.size)])
    files["multipage.tiff"] = (buf.getvalue(), OK)
    buf = io.BytesIO()
    photo.save(buf, "WEBP", quality=90)
    files["photo.webp"] = (buf.getvalue(), OK)

    expected = {}
    for name, (data, want) in files.items():
        (folder / name).write_bytes(data)
        expected[name] = want
    os.symlink(folder / "no-such-target.jpg", folder / "dangling_link.jpg")
    expected["dangling_link.jpg"] = "not_found"
    return dict(sorted(expected.items()))
