"""Opening one image, safely, and turning every way it can fail into an `InputError` with a stable type.

Order of work for a file: read its header (Pillow's `open` is lazy), refuse it if it has more pixels than
`MAX_PIXELS` (a decompression bomb is refused before any of it is decoded), optionally let the JPEG decoder
downscale in the DCT domain (`--fast-decode`), decode, apply the EXIF orientation (users classify what they
see), take the first frame of animated or multi-page files, and convert to RGB as the reference code does.
16-bit and 32-bit integer and float greyscale are brought to 8 bits first by the rule in docs/output.md
(Pillow's convert would clip them to white or black).

Only the raster formats the documentation lists are opened (`RASTER_FORMATS`): Pillow also reads EPS, which
runs Ghostscript on the file, and a dozen rarer formats; a file one of them would claim is `unsupported_format`.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from typing import BinaryIO

from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from ..core import errors as E
from ..core.errors import InputError

# Pillow's own bomb threshold (it warns above this and refuses above twice this); here it is a hard limit,
# checked from the header before decoding.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey guess
# Pillow warns (rather than fails) on some damaged files and on large images; the checks here decide instead,
# and stderr stays one line per file. A filter set once: `warnings.catch_warnings` is not thread-safe, and
# the decode threads would undo each other's.
warnings.filterwarnings("ignore", module=r"PIL\.")

# Metadata is not pixels: Pillow refuses a PNG whose ICC profile or XMP/text chunk inflates past 1 MiB, where
# libpng (torchvision) reads it. Each chunk may inflate to METADATA_MAX and the text chunks together to as
# much (Pillow holds them in `info`); past that the file is a zip bomb in its metadata and is refused.
METADATA_MAX = 64 * 2**20
PngImagePlugin.MAX_TEXT_CHUNK = METADATA_MAX
PngImagePlugin.MAX_TEXT_MEMORY = METADATA_MAX

# The raster formats docs/output.md lists, as Pillow names them (MPO is read by the JPEG plugin; HEIF exists
# only where the pillow-heif plugin is registered). TGA last: it has no signature, Pillow tries it on anything.
RASTER_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM", "ICO", "JPEG2000", "AVIF", "HEIF",
                  "TGA")
_GREY16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _raster_formats() -> list[str]:
    Image.init()  # every plugin registered (at once after the first call), so that the list below is complete
    return [f for f in RASTER_FORMATS if f in Image.OPEN]


def _other_format(prefix: bytes) -> str | None:
    """The Pillow format, outside RASTER_FORMATS, whose signature check accepts these first 16 bytes (only the
    check runs, never the plugin), or None."""
    for fmt, (_, accept) in list(Image.OPEN.items()):
        if fmt in RASTER_FORMATS or accept is None:
            continue
        try:
            verdict = accept(prefix)
        except Exception:
            continue
        if verdict and not isinstance(verdict, str):  # a str is Pillow's "almost, but not supported"
            return fmt
    return None


_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}


def _sniff(head: bytes) -> tuple[str, str]:
    """Why bytes Pillow could not identify are not an image we can read: (error type, reason)."""
    for magic, name in _MAGIC.items():
        if head.startswith(magic) and len(head) > len(magic):
            return E.CORRUPT, f"{name} file with a damaged or truncated header"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return E.CORRUPT, "WebP file with a damaged or truncated header"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return E.UNSUPPORTED_FORMAT, "PostScript/EPS is not read (a vector format); export it as PNG or JPEG first"
    if head.startswith(b"%PDF-"):
        return E.UNSUPPORTED_FORMAT, "PDF is a document, not an image; export the page as PNG or JPEG first"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return E.UNSUPPORTED_FORMAT, "SVG is a vector format; render it to PNG first"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace")
        if brand in ("heic", "heix", "hevc", "heim", "heis", "mif1", "msf1"):
            return E.UNSUPPORTED_FORMAT, "HEIC/HEIF needs a Pillow plugin (pip install pillow-heif)"
        if brand in ("avif", "avis"):
            return E.UNSUPPORTED_FORMAT, "AVIF is not supported by this Pillow build"
        return E.NOT_AN_IMAGE, f"ISO media file ({brand!r}), not an image"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return E.NOT_AN_IMAGE, "HTML document, not an image"
    if text[:1] in (b"{", b"["):
        return E.NOT_AN_IMAGE, "JSON text, not an image"
    other = _other_format(head[:16])
    if other:
        return E.UNSUPPORTED_FORMAT, (f"{other} images are not read (JPEG, PNG, GIF, BMP, WebP, TIFF, PNM, TGA, "
                                      "ICO, JPEG 2000 and AVIF are)")
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:512]):
        return E.NOT_AN_IMAGE, "text file, not an image"
    return E.NOT_AN_IMAGE, "not a recognised image format"


def _classify_decode_error(exc: BaseException) -> InputError:
    msg = str(exc) or type(exc).__name__
    low = msg.lower()
    if "max_text_chunk" in low or "text chunks" in low:  # PngImagePlugin's two metadata limits
        return InputError(E.DECOMPRESSION_BOMB, f"refused as a decompression bomb: its metadata (ICC profile, "
                                                f"XMP or text chunks) inflates past {METADATA_MAX >> 20} MiB")
    if isinstance(exc, Image.DecompressionBombError) or "decompressed data too large" in low:
        return InputError(E.DECOMPRESSION_BOMB, f"refused as a decompression bomb: {msg}")
    if "truncated" in low or "premature end" in low or isinstance(exc, EOFError):
        return InputError(E.TRUNCATED, f"truncated image file ({msg})")
    if isinstance(exc, MemoryError):
        return InputError(E.DECOMPRESSION_BOMB, "image too large to decode in memory")
    return InputError(E.CORRUPT, f"corrupt image data ({type(exc).__name__}: {msg})")


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (I;16*), 32-bit integer (I) or 32-bit float (F) greyscale image as 8-bit L, by the rule in
    docs/output.md: I;16* as v >> 8; F within [0, 1] as round(v * 255), other F truncated to integers and read
    as I; I up to 255 as is, up to 65535 as v >> 8, beyond as v >> (bits of the largest value - 8). Raises
    `InputError` (unsupported_format) for negative, NaN or infinite values: no display range fits them."""
    import numpy as np  # only for these rare modes: the decode threads start before torch and numpy are imported

    a = np.asarray(img)
    if img.mode in _GREY16:
        return Image.fromarray((a >> 8).astype(np.uint8), "L")
    what = "32-bit float" if img.mode == "F" else "32-bit integer"
    if img.mode == "F":
        if not np.isfinite(a).all():
            raise InputError(E.UNSUPPORTED_FORMAT, f"{what} greyscale with NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            return Image.fromarray(np.rint(a * 255).astype(np.uint8), "L")
        if lo >= 0 and hi < 2**31:
            a = a.astype(np.int32)  # truncated, as a cast to integers does
    lo, hi = a.min().item(), a.max().item()
    if lo < 0 or hi >= 2**31:
        raise InputError(E.UNSUPPORTED_FORMAT, f"{what} greyscale with values from {lo:g} to {hi:g}: only "
                                               "values from 0 up are read (see the pixel-mode rule in the docs)")
    shift = 0 if hi <= 255 else 8 if hi <= 65535 else int(hi).bit_length() - 8
    return Image.fromarray((a >> shift).astype(np.uint8), "L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any pixel mode Pillow opens as the RGB picture a viewer shows (alpha dropped, as the reference code
    does); `InputError` (unsupported_format) for a mode with no such picture."""
    if img.mode == "RGB":
        return img
    if img.mode in _GREY16 or img.mode in ("I", "F"):
        img = _grey_to_8bit(img)
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the documented way; a direct P -> RGB warns about palette transparency
    try:
        return img.convert("RGB")
    except ValueError:  # Pillow has no conversion for this mode
        raise InputError(E.UNSUPPORTED_FORMAT, f"pixel mode {img.mode} cannot be shown as RGB") from None


def decode(fp: BinaryIO, *, draft_min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file object to a loaded RGB PIL image; raises `InputError` for anything else.

    `draft_min_side`: let a JPEG decode at 1/2, 1/4 or 1/8 scale while its shorter side stays at least this
    long (Pillow's draft mode; the exact resize happens afterwards).
    """
    head = fp.read(64)
    if not head:
        raise InputError(E.EMPTY_FILE, "empty file (0 bytes)")
    fp.seek(0)
    try:
        try:
            img = Image.open(fp, formats=_raster_formats())
        except UnidentifiedImageError:
            fp.seek(0)
            kind, reason = _sniff(fp.read(1024))
            raise InputError(kind, reason) from None
        width, height = img.size
        if width * height > max_pixels:
            raise InputError(
                E.DECOMPRESSION_BOMB,
                f"{width}x{height} is {width * height:,} pixels, over the {max_pixels:,} limit "
                "(refused as a possible decompression bomb)",
            )
        if width < 1 or height < 1:
            raise InputError(E.CORRUPT, f"invalid size {width}x{height}")
        if draft_min_side and img.format == "JPEG":
            scale = draft_min_side / min(width, height)
            if scale < 1:
                img.draft("RGB", (max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999))))
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block: classify the pixels as stored rather than fail
            pass
        return _to_rgb(img)
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile input (MemoryError too): each is this file's
        raise _classify_decode_error(exc) from None


def in_memory(img: Image.Image) -> Image.Image:
    """A PIL image given in memory (the Python API), made what `decode` makes of a file: loaded, its EXIF
    orientation applied, RGB. The caller's image is not changed."""
    img.load()
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block: the pixels as stored, as `decode` does
        pass
    return _to_rgb(img)


def open_local(path: str, **kwargs) -> Image.Image:
    """Decode the image at `path`, mapping file-system failures to their error types. Only regular files are
    opened: a FIFO or a device named like an image would block the decode thread forever."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(E.IS_A_DIRECTORY, "is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(E.NOT_AN_IMAGE, "not a regular file (a FIFO, socket or device)")
        with open(path, "rb") as f:
            return decode(f, **kwargs)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(E.NOT_FOUND, f"dangling symlink to {os.readlink(path)!r}") from None
        raise InputError(E.NOT_FOUND, "no such file") from None
    except IsADirectoryError:
        raise InputError(E.IS_A_DIRECTORY, "is a folder, not an image file") from None
    except PermissionError:
        raise InputError(E.PERMISSION_DENIED, "permission denied") from None
    except ValueError:  # "embedded null byte": a path from stdin that no file can have
        raise InputError(E.NOT_FOUND, "no such file (the path contains a NUL byte)") from None
    except OSError as exc:
        raise InputError(E.CORRUPT, f"cannot read file: {exc.strerror or exc}") from None


def open_bytes(data: bytes, **kwargs) -> Image.Image:
    return decode(io.BytesIO(data), **kwargs)
