"""Property test: whatever bytes a file holds, decoding gives an RGB picture or a typed one-line InputError,
never another exception (the pipeline would report it as internal_error, a bug) and never a hang.

Seeds are small (64x64) files of every format the tool reads, made from a colour photo: JPEG (baseline and
progressive), PNG (RGB, RGBA, palette, interlaced), GIF (still and animated), TIFF (raw, LZW, multi-page), WebP
(lossy and lossless) and BMP, and every pixel mode a file opens in (1, L, LA, P, PA, I;16, I;16B, I, F, CMYK,
YCbCr, LAB, in PNG, TIFF, PGM and PFM, the greyscale ones at 8, 16, 20-bit and 0..1 float ranges); they are mutated (truncated, bytes set or bit-flipped, cut, inserted, spliced
with another seed's tail, chunks repeated), with positions biased towards the headers where parsers decide
what to allocate and read. Each example decodes in a worker thread bounded by a real timeout, so a hang fails
the example instead of stalling CI. Decoding goes through `resnet_cli.inputs.images` (open_local for a file on disk,
open_bytes for downloaded bytes) and the pixels through `resnet_cli.models.preprocess.resize_and_crop`: the same
calls the pipeline makes for each input.
"""

from __future__ import annotations

import io
import threading

import numpy as np

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from checkpoints import PHOTOS
from resnet_cli.core import errors
from resnet_cli.core.errors import InputError

ERROR_TYPES = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}
assert {"truncated", "corrupt", "not_an_image", "internal_error"} <= ERROR_TYPES  # the vocabulary was read
DECODE_TIMEOUT_S = 10.0


def _seed_files() -> dict[str, bytes]:
    photo = Image.open(next(p for p in PHOTOS if p.name == "chelsea.png")).convert("RGB").resize((64, 64))
    other = Image.open(next(p for p in PHOTOS if p.name == "coffee.png")).convert("RGB").resize((64, 64))
    rgba = photo.copy()
    rgba.putalpha(Image.linear_gradient("L").resize((64, 64)))

    def save(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    seeds = {
        "baseline.jpg": save(photo, "JPEG", quality=90),
        "progressive.jpg": save(photo, "JPEG", quality=90, progressive=True, optimize=True),
        "rgb.png": save(photo, "PNG"),
        "rgba.png": save(rgba, "PNG"),
        "palette.png": save(photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG", transparency=0),
        "interlaced.png": save(photo, "PNG", interlace=1),
        "still.gif": save(photo, "GIF"),
        "animated.gif": save(photo, "GIF", save_all=True, append_images=[other], duration=50, loop=0),
        "raw.tiff": save(photo, "TIFF"),
        "lzw.tiff": save(photo, "TIFF", compression="tiff_lzw"),
        "pages.tiff": save(photo, "TIFF", save_all=True, append_images=[other]),
        "lossy.webp": save(photo, "WEBP", quality=80),
        "lossless.webp": save(rgba, "WEBP", lossless=True),
        "photo.bmp": save(photo, "BMP"),
    }
    grey = np.asarray(photo.convert("L"), dtype=np.int64)
    g16 = grey * 256 + np.random.default_rng(0).integers(0, 256, grey.shape)
    seeds.update({
        "mode_1.png": save(photo.convert("1"), "PNG"),
        "mode_L.tiff": save(photo.convert("L"), "TIFF"),
        "mode_LA.tiff": save(photo.convert("LA"), "TIFF"),
        "mode_PA.tiff": save(photo.convert("P").convert("PA"), "TIFF"),
        "mode_I16.tiff": save(Image.frombytes("I;16", (64, 64), g16.astype("<u2").tobytes()), "TIFF"),
        "mode_I16B.tiff": save(Image.frombytes("I;16B", (64, 64), g16.astype(">u2").tobytes()), "TIFF"),
        "mode_I16.png": save(Image.frombytes("I;16", (64, 64), g16.astype("<u2").tobytes()), "PNG"),
        "mode_I16.pgm": save(Image.frombytes("I;16", (64, 64), g16.astype("<u2").tobytes()), "PPM"),
        "mode_I_20bit.tiff": save(Image.fromarray((g16 * 16).astype(np.int32), "I"), "TIFF"),
        "mode_F_0_1.tiff": save(Image.fromarray((grey / 255).astype(np.float32), "F"), "TIFF"),
        "mode_F_0_1.pfm": save(Image.fromarray((grey / 255).astype(np.float32), "F"), "PPM"),
        "mode_CMYK.tiff": save(photo.convert("CMYK"), "TIFF"),
        "mode_YCbCr.tiff": save(photo.convert("YCbCr"), "TIFF"),
        "mode_LAB.tiff": save(photo.convert("LAB"), "TIFF"),
    })
    for name, data in seeds.items():  # every seed is a valid file of its format to begin with
        fmt = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "tiff": "TIFF", "webp": "WEBP", "bmp": "BMP", "pgm": "PPM",
               "pfm": "PPM"}
        assert Image.open(io.BytesIO(data)).format == fmt[name.rsplit(".", 1)[1]], name
    return seeds


SEEDS = _seed_files()
SEED_NAMES = sorted(SEEDS)

MUTATIONS = ["truncate", "set", "bitflip", "cut", "insert", "splice", "repeat"]


@st.composite
def mutated_files(draw):
    """(seed name, the mutations applied, the bytes): the report names how a failing file was made."""
    name = draw(st.sampled_from(SEED_NAMES))
    data = bytearray(SEEDS[name])
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(MUTATIONS))
        n = len(data)
        pos = draw(st.one_of(st.integers(0, min(n, 96)), st.integers(0, n)))  # headers first
        if op == "truncate":
            del data[draw(st.integers(0, n)):]
        elif op == "set" and pos < n:
            data[pos] = draw(st.integers(0, 255))
        elif op == "bitflip" and pos < n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 512))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "splice":  # this file's head, another file's tail
            other = SEEDS[draw(st.sampled_from(SEED_NAMES))]
            data[pos:] = other[draw(st.integers(0, len(other))):]
        elif op == "repeat" and pos < n:
            chunk = data[pos:pos + draw(st.integers(1, 256))]
            data[pos:pos] = chunk * draw(st.integers(1, 4))
        ops.append((op, pos))
    return name, ops, bytes(data)


def _bounded(fn, timeout: float = DECODE_TIMEOUT_S):
    """fn() in a daemon worker thread; ("ok", value) or ("raised", exception). A call still running after
    `timeout` fails the example (the thread is left behind: nothing can stop it, and it must not hold up CI)."""
    box: dict = {}

    def work():
        try:
            box["ok"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            box["raised"] = exc

    worker = threading.Thread(target=work, name="fuzz-decode", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        pytest.fail(f"decoding did not return within {timeout:.0f} s (a hang)")
    return ("ok", box["ok"]) if "ok" in box else ("raised", box["raised"])


def _outcome(kind: str, value, pre) -> str:
    """'ok' for a full crop of RGB pixels, else the InputError's type; anything else fails the example."""
    if kind == "ok":
        assert value.mode == "RGB" and value.size == (pre.crop, pre.crop)
        assert len(value.tobytes()) == pre.crop * pre.crop * 3
        return "ok"
    if not isinstance(value, InputError):
        raise AssertionError(f"untyped failure (the pipeline would report internal_error): "
                             f"{type(value).__name__}: {value}") from value
    assert value.kind in ERROR_TYPES, f"undocumented error type {value.kind!r}: {value.message}"
    assert value.kind != "internal_error", value.message
    assert value.message and "\n" not in value.message, repr(value.message)
    return value.kind


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "input.img"


# derandomize + no database: CI runs the very same 500 examples every time. No shrinking: a hang costs the
# timeout per attempt; the falsifying example (seed, mutations, bytes) is printed whole and reproduces as is.
@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on damaged files; the tool silences them too
@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate), suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(*[mutated_files()] * 4, st.tuples(st.just("random"), st.just([]), st.binary(max_size=2048))))
def test_mutated_files_of_every_format_give_an_image_or_a_typed_error_in_bounded_time(case, scratch):
    from resnet_cli.inputs.images import open_bytes, open_local
    from resnet_cli.models.preprocess import resize_and_crop
    from resnet_cli.models.registry import get_arch

    pre = get_arch("resnet18").default_weights.preprocess
    _, _, data = case
    scratch.write_bytes(data)
    from_file = _outcome(*_bounded(lambda: resize_and_crop(open_local(str(scratch)), pre)), pre)
    from_bytes = _outcome(*_bounded(lambda: resize_and_crop(open_bytes(data), pre)), pre)
    assert from_file == from_bytes  # a local file and the same bytes downloaded fare alike


def test_a_decode_that_hangs_fails_at_the_timeout():
    import time

    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not return within"):
        _bounded(lambda: time.sleep(3), timeout=0.2)
    assert time.monotonic() - t0 < 2


def test_the_seed_files_themselves_decode():
    """The mutations start from valid files of each format and mode: unmutated, each one classifies, and none
    comes out as a uniform (black or white) picture."""
    from resnet_cli.inputs.images import open_bytes

    for name, data in SEEDS.items():
        img = open_bytes(data)
        assert img.mode == "RGB" and img.size == (64, 64), name
        assert np.asarray(img).std() > 20, f"{name}: decoded to a (nearly) uniform picture"
    modes = {Image.open(io.BytesIO(data)).mode for data in SEEDS.values()}
    assert {"1", "L", "LA", "P", "PA", "I;16", "I;16B", "I", "F", "RGB", "RGBA", "CMYK", "YCbCr", "LAB"} <= modes
