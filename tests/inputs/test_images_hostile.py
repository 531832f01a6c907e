"""Image files that are not what their name says, pixel modes that are easy to get wrong, and metadata that is
big without being pixels.

- Only the raster formats the docs list are opened: PostScript/EPS (which Pillow hands to Ghostscript), PDF and
  the rarer formats Pillow reads are `unsupported_format`, whatever the file is called, and Ghostscript never
  runs. A fake `gs` first on PATH writes a marker file if anything starts it.
- Every pixel mode a file can open in gives the picture a viewer shows (checked against torchvision on the
  image converted explicitly by the documented rule, as tests/inputs/test_images_colour.py does), or a clear
  `unsupported_format` failure: never a silent black or white picture.
- A PNG whose ICC profile or XMP/text chunk inflates past Pillow's 1 MiB default is classified like the same
  pixels without it; a pixel bomb, and a zip bomb in the metadata, are still refused.
"""

from __future__ import annotations

import io
import json
import os
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from checkpoints import SAMPLES
from test_images_colour import TOL, _differs, _swap_channels, _torchvision_top5

SIZE = (160, 120)  # small pictures: the model sees a 224 crop of the resized picture whatever the file's size


def _photo(name: str = "chelsea.png") -> Image.Image:
    return Image.open(SAMPLES / name).convert("RGB").resize(SIZE)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _resnet18(checkpoint):
    import torch
    import torchvision

    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(checkpoint("resnet18"), weights_only=True))
    model.eval()
    return model, torchvision.models.ResNet18_Weights.DEFAULT.transforms()


def _top5(rec: dict) -> tuple[list[int], list[float]]:
    return [t["index"] for t in rec["topk"]], [t["probability"] for t in rec["topk"]]


# ---------------------------------------------------------------------------------------------------------
# Only the documented raster formats are opened; Ghostscript never runs

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
       b"newpath 0 0 moveto 64 64 lineto 0 64 lineto closepath fill\nshowpage\n%%EOF\n")


def _dos_eps() -> bytes:
    """The binary (DOS) EPS container: a 30-byte header, then the PostScript."""
    import struct

    return struct.pack("<IIIIIIIH", 0xC6D3D0C5, 30, len(EPS), 0, 0, 0, 0, 0xFFFF) + EPS


@pytest.fixture
def fake_gs(tmp_path):
    """(PATH with a fake `gs` first, the marker file it writes when anything runs it)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs-ran"
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\necho "GPL Ghostscript 10.0"\nexit 0\n')
    gs.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", marker


def _other_format_files() -> dict[str, bytes]:
    """Files Pillow would read but the docs do not list, under image names and their own names."""
    photo = _photo()
    pillow_eps = _save(photo, "EPS")  # a real EPS with an image in it, as Pillow writes one
    assert pillow_eps.startswith(b"%!PS")
    return {
        "postscript.jpg": EPS,
        "postscript.png": EPS,
        "binary_eps.jpeg": _dos_eps(),
        "pillow_written.tif": pillow_eps,
        "drawing.eps": EPS,
        "drawing.ps": EPS,
        "document.jpg": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <</Type /Catalog>> endobj\ntrailer <<>>\n%%EOF\n",
        "document.pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <</Type /Catalog>> endobj\ntrailer <<>>\n%%EOF\n",
        "paintbrush.png": _save(photo, "PCX"),  # PCX, SGI, XBM, MSP: formats Pillow reads that the docs do not list
        "silicon_graphics.jpg": _save(photo, "SGI"),
        "bitmap_text.bmp": _save(photo.convert("1"), "XBM"),
        "macpaint.gif": _save(photo.convert("1"), "MSP"),
    }


@pytest.mark.timeout(120)
def test_postscript_and_other_unlisted_formats_are_unsupported_and_ghostscript_never_runs(
        tmp_path, checkpoint, cli, fake_gs, monkeypatch):
    """Explicit files, the same files in a scanned folder, and an HTML report of the run, with the fake `gs`
    first on PATH (and Pillow's memory of where Ghostscript is cleared, so that it would look it up again)."""
    from PIL import EpsImagePlugin

    path, marker = fake_gs
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None, raising=False)
    files = _other_format_files()
    explicit = tmp_path / "explicit"
    folder = tmp_path / "folder"
    explicit.mkdir()
    folder.mkdir()
    for name, data in files.items():
        (explicit / name).write_bytes(data)
        (folder / name).write_bytes(data)
    _photo().save(folder / "real_photo.png")  # the run goes on around the refused files
    out, report = tmp_path / "out.jsonl", tmp_path / "report.html"
    res = cli(*(explicit / n for n in files), folder, "--arch", "resnet18", "--weights", checkpoint("resnet18"),
              "-f", "jsonl", "-o", out, "--report", report)
    assert not marker.exists(), f"Ghostscript was started: {marker.read_text()!r}"
    assert res.code == 1, res.stderr
    assert "Traceback" not in res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {r["path"]: r for r in records}
    # the folder scan lists files by extension: the .eps, .ps and .pdf names are not picked up there
    listed = {n for n in files if os.path.splitext(n)[1] not in (".eps", ".ps", ".pdf")}
    expected = [str(explicit / n) for n in files] + sorted(f"{folder}/{n}" for n in listed | {"real_photo.png"})
    assert sorted(by_path) == sorted(expected)
    for p, rec in by_path.items():
        if p.endswith("real_photo.png"):
            assert "topk" in rec, rec
            continue
        assert rec.get("error", {}).get("type") == "unsupported_format", rec
        assert "\n" not in rec["error"]["message"]
    for name in ("postscript.jpg", "binary_eps.jpeg", "drawing.eps"):
        assert "PostScript" in by_path[str(explicit / name)]["error"]["message"]
    assert "PDF" in by_path[str(explicit / "document.pdf")]["error"]["message"]
    assert "PCX" in by_path[str(explicit / "paintbrush.png")]["error"]["message"]
    assert report.exists()


def test_unlisted_formats_are_refused_by_the_decoder_itself(tmp_path, fake_gs, monkeypatch):
    """The same files through the decode call the pipeline, explain and the report's thumbnails make, in this
    process, with Pillow's memory of Ghostscript cleared so that it would look it up on PATH again."""
    from PIL import EpsImagePlugin

    from resnet_cli.core.errors import InputError
    from resnet_cli.inputs.images import open_bytes, open_local

    path, marker = fake_gs
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None, raising=False)
    for name, data in _other_format_files().items():
        (tmp_path / name).write_bytes(data)
        for decode in (lambda: open_local(str(tmp_path / name)), lambda: open_bytes(data),
                       lambda: open_local(str(tmp_path / name), draft_min_side=256)):
            with pytest.raises(InputError) as err:
                decode()
            assert err.value.kind == "unsupported_format", (name, err.value.message)
    assert not marker.exists(), f"Ghostscript was started: {marker.read_text()!r}"


def test_every_listed_raster_format_still_opens(tmp_path):
    """The neighbours on the other side: each format the docs list, under a name of another format, decodes."""
    from resnet_cli.inputs.images import open_local

    photo = _photo()
    files = {"jpeg.png": _save(photo, "JPEG"), "png.jpg": _save(photo, "PNG"), "gif.jpg": _save(photo, "GIF"),
             "bmp.jpg": _save(photo, "BMP"), "webp.jpg": _save(photo, "WEBP"), "tiff.jpg": _save(photo, "TIFF"),
             "ppm.jpg": _save(photo, "PPM"), "tga.jpg": _save(photo, "TGA"), "ico.jpg": _save(photo, "ICO"),
             "jpeg2000.jpg": _save(photo, "JPEG2000")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        img = open_local(str(tmp_path / name))
        assert img.mode == "RGB" and img.size[0] > 0, name


# ---------------------------------------------------------------------------------------------------------
# Pixel modes: the picture a viewer shows, by the documented rule, or unsupported_format

def _rule_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """The documented rule (docs/output.md), written out independently of the product's code."""
    if mode.startswith("I;16"):
        return (a.astype(np.int64) >> 8).astype(np.uint8)
    if mode == "F" and a.max() <= 1:
        return np.rint(a * 255).astype(np.uint8)
    a = a.astype(np.int64)
    hi = int(a.max())
    shift = 0 if hi <= 255 else 8 if hi <= 65535 else hi.bit_length() - 8
    return (a >> shift).astype(np.uint8)


def _grey_file(grey8: np.ndarray, mode: str, fmt: str, scale: float, rng) -> bytes:
    """The photo's grey levels, stored in `mode` at a `scale` of the 8-bit range, with noise in the bits the
    rule drops (so a rounding rule other than the documented one would show)."""
    if mode == "F":
        values = (grey8.astype(np.float32) + rng.random(grey8.shape, dtype=np.float32) * 0.9) * np.float32(scale)
        img = Image.fromarray(values.astype(np.float32), "F")
    else:
        values = grey8.astype(np.int64) * int(scale) + rng.integers(0, int(scale), grey8.shape)
        if mode.startswith("I;16"):
            dtype = ">u2" if mode == "I;16B" else "<u2"
            img = Image.frombytes(mode, grey8.shape[::-1], values.astype(dtype).tobytes())
        else:
            img = Image.fromarray(values.astype(np.int32), "I")
    return _save(img, fmt)


def make_mode_corpus(folder) -> dict[str, dict]:
    """{name: {"path", "mode" (as Pillow opens it), "ref" (the explicitly converted RGB picture), "wrong"
    (plausible wrong readings: clipped, black, raw bytes as RGB)}}."""
    folder.mkdir(parents=True, exist_ok=True)
    chelsea, coffee = _photo("chelsea.png"), _photo("coffee.png")
    grey8 = np.asarray(_photo("astronaut.png").convert("L"))
    rng = np.random.default_rng(0)
    files = {
        "bilevel_1.png": _save(chelsea.convert("1"), "PNG"),
        "bilevel_1.tiff": _save(coffee.convert("1"), "TIFF"),
        "grey_L.tiff": _save(chelsea.convert("L"), "TIFF"),
        "grey_L.pgm": _save(coffee.convert("L"), "PPM"),
        "grey_alpha_LA.tiff": _save(coffee.convert("LA"), "TIFF"),
        "palette_alpha_PA.tiff": _save(chelsea.convert("P").convert("PA"), "TIFF"),
        "grey16_I16.tiff": _grey_file(grey8, "I;16", "TIFF", 256, rng),
        "grey16_big_endian_I16B.tiff": _grey_file(grey8, "I;16B", "TIFF", 256, rng),
        "grey16.pgm": _grey_file(grey8, "I;16", "PPM", 256, rng),
        "int32_16bit_range_I.tiff": _grey_file(grey8, "I", "TIFF", 256, rng),
        "int32_8bit_range_I.tiff": _grey_file(grey8, "I", "TIFF", 1, rng),
        "int32_20bit_range_I.tiff": _grey_file(grey8, "I", "TIFF", 4096, rng),
        "float_0_to_1_F.tiff": _grey_file(grey8, "F", "TIFF", 1 / 256, rng),
        "float_0_to_1_F.pfm": _grey_file(grey8, "F", "PPM", 1 / 256, rng),
        "float_0_to_255_F.tiff": _grey_file(grey8, "F", "TIFF", 1, rng),
        "float_0_to_65535_F.tiff": _grey_file(grey8, "F", "TIFF", 256, rng),
        "cmyk.tiff": _save(chelsea.convert("CMYK"), "TIFF"),
        "ycbcr.tiff": _save(coffee.convert("YCbCr"), "TIFF"),
        "rgbx.tiff": _save(chelsea.convert("RGBX"), "TIFF"),
    }
    from PIL import ImageCms

    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    files["lab.tiff"] = _save(ImageCms.applyTransform(chelsea, to_lab), "TIFF")

    corpus = {}
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        img = Image.open(path)
        img.load()
        wrong = []
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):
            a = np.asarray(img)
            ref = Image.fromarray(_rule_8bit(a, img.mode), "L").convert("RGB")
            if a.max() >= 256 or a.max() <= 1:
                wrong.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB"))  # clipped
            elif img.mode == "I":
                wrong.append(Image.fromarray((a >> 8).astype(np.uint8), "L").convert("RGB"))  # always >> 8: black
            else:
                wrong.append(Image.fromarray(np.rint(a * 255).clip(0, 255).astype(np.uint8), "L").convert("RGB"))
        else:
            ref = img.convert("RGB")
            if img.mode in ("LAB", "YCbCr", "CMYK"):  # the stored bytes read as RGB
                wrong.append(Image.frombytes("RGB", img.size, img.tobytes()[: img.size[0] * img.size[1] * 3]))
            if img.mode in ("1", "L", "LA", "PA", "P"):
                wrong.append(Image.new("RGB", img.size, (255, 255, 255)))  # a white picture
            else:
                wrong.append(_swap_channels(ref))
        corpus[name] = {"path": path, "mode": img.mode, "ref": ref, "wrong": wrong}
    return corpus


@pytest.fixture(scope="module")
def mode_corpus(tmp_path_factory):
    return make_mode_corpus(tmp_path_factory.mktemp("modes") / "files")


def test_the_mode_files_open_in_their_modes_and_show_a_picture(mode_corpus):
    """Guards the corpus: each file opens in the mode it stands for, and its explicit picture is a picture
    (not uniform), so a black or white result would differ from it."""
    want = {"bilevel_1.png": "1", "grey_L.tiff": "L", "grey_alpha_LA.tiff": "LA", "palette_alpha_PA.tiff": "PA",
            "grey16_I16.tiff": "I;16", "grey16_big_endian_I16B.tiff": "I;16B", "grey16.pgm": ("I", "I;16B"),
            "int32_16bit_range_I.tiff": "I", "int32_20bit_range_I.tiff": "I", "float_0_to_1_F.tiff": "F",
            "float_0_to_1_F.pfm": "F", "cmyk.tiff": "CMYK", "ycbcr.tiff": "YCbCr", "lab.tiff": "LAB",
            "rgbx.tiff": ("RGBX", "RGB")}
    for name, mode in want.items():
        assert mode_corpus[name]["mode"] in mode, (name, mode_corpus[name]["mode"])
    for name, c in mode_corpus.items():
        assert np.asarray(c["ref"]).std() > 20, f"{name}: its explicit picture is (nearly) uniform"
        assert c["wrong"], name


@pytest.mark.timeout(120)
def test_every_pixel_mode_matches_torchvision_on_the_explicitly_converted_image(mode_corpus, checkpoint, cli):
    model, tf = _resnet18(checkpoint)
    names = list(mode_corpus)
    res = cli(*(mode_corpus[n]["path"] for n in names), "--arch", "resnet18", "--weights", checkpoint("resnet18"),
              "--topk", "5", "-f", "jsonl")
    records = res.jsonl()
    assert [os.path.basename(r["path"]) for r in records] == names
    failed = [f"{os.path.basename(r['path'])}: {r['error']}" for r in records if "error" in r]
    assert not failed and res.code == 0, "\n".join(failed) + res.stderr

    refs = _torchvision_top5(model, tf, [mode_corpus[n]["ref"] for n in names])
    mismatches = []
    for name, rec, (indices, probs) in zip(names, records, refs):
        got_i, got_p = _top5(rec)
        if got_i != indices or any(abs(a - b) > TOL for a, b in zip(got_p, probs)):
            mismatches.append(f"{name} ({mode_corpus[name]['mode']}): cli {got_i} {[round(p, 5) for p in got_p]} "
                              f"!= torchvision {indices} {[round(p, 5) for p in probs]}")
    assert not mismatches, "\n".join(mismatches)

    # The comparison can fail: each wrong reading (black, white, clipped, raw bytes) gives another answer.
    wrong = [(n, w) for n in names for w in mode_corpus[n]["wrong"]]
    ref_of = dict(zip(names, refs))
    for (name, _), got in zip(wrong, _torchvision_top5(model, tf, [w for _, w in wrong])):
        assert _differs(got, ref_of[name]), f"{name}: a wrong reading gives the same answer; the check is blind"


def test_pixel_values_with_no_display_range_are_unsupported_not_black(tmp_path, checkpoint, cli):
    """Negative, NaN or infinite greyscale values: a clear unsupported_format naming the values, in order,
    and the other inputs still classified."""
    grey = np.asarray(_photo().convert("L"), dtype=np.float32)
    files = {
        "float_minus1_to_1.tiff": Image.fromarray(grey / 127.5 - 1, "F"),
        "float_nan.tiff": Image.fromarray(np.where(grey > 100, np.nan, grey / 255).astype(np.float32), "F"),
        "float_inf.tiff": Image.fromarray(np.where(grey > 100, np.inf, grey / 255).astype(np.float32), "F"),
        "int_signed.tiff": Image.fromarray((grey.astype(np.int32) - 128) * 256, "I"),
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    _photo().save(tmp_path / "photo.png")
    names = [*files, "photo.png"]
    res = cli(*(tmp_path / n for n in names), "--arch", "resnet18", "--weights", checkpoint("resnet18"),
              "-f", "jsonl")
    records = res.jsonl()
    assert res.code == 1 and [os.path.basename(r["path"]) for r in records] == names
    for rec in records[:-1]:
        assert rec.get("error", {}).get("type") == "unsupported_format", rec
        assert "greyscale" in rec["error"]["message"] and "\n" not in rec["error"]["message"]
    assert "topk" in records[-1]


def test_modes_no_file_opens_in_still_convert_or_fail_clearly():
    """HSV, RGBX and the premultiplied modes come from no file format Pillow reads; the conversion step still
    gives their picture or a clear unsupported_format."""
    from resnet_cli.core.errors import InputError
    from resnet_cli.inputs.images import _to_rgb

    photo = _photo()
    for mode in ("HSV", "RGBX", "RGBa"):
        got = np.asarray(_to_rgb(photo.convert(mode)), dtype=np.int16)
        assert np.abs(got - np.asarray(photo, dtype=np.int16)).mean() < 2, mode
    grey = np.asarray(photo.convert("L"), dtype=np.int16)
    try:
        got = np.asarray(_to_rgb(photo.convert("LA").convert("La")), dtype=np.int16)
    except InputError as err:
        assert err.kind == "unsupported_format" and "La" in err.message
    else:  # a Pillow that converts La: then it must be the picture
        assert np.abs(got[..., 0] - grey).mean() < 2


# ---------------------------------------------------------------------------------------------------------
# Big metadata is not a bomb; bombs still are

def _png_with_metadata(img: Image.Image, kind: str, inflated: int) -> bytes:
    filler = (b"<rdf:li>xmp.did:0123456789abcdef</rdf:li>\n" * (inflated // 41 + 1))[:inflated]
    if kind == "icc":
        return _save(img, "PNG", icc_profile=filler)
    info = PngImagePlugin.PngInfo()
    if kind == "xmp_itxt":
        info.add_itxt("XML:com.adobe.xmp", filler.decode("ascii"), zip=True)
    elif kind == "ztxt":
        info.add_text("Comment", filler.decode("ascii"), zip=True)
    elif kind == "ztxt_after_pixels":  # a zTXt chunk after the image data: read when the pixels are loaded
        data = _save(img, "PNG")
        chunk = b"Comment\0\0" + zlib.compress(filler, 9)
        end = data.rindex(b"IEND") - 4
        crc = zlib.crc32(b"zTXt" + chunk).to_bytes(4, "big")
        return data[:end] + len(chunk).to_bytes(4, "big") + b"zTXt" + chunk + crc + data[end:]
    return _save(img, "PNG", pnginfo=info)


@pytest.mark.timeout(120)
def test_a_png_with_megabytes_of_icc_or_xmp_metadata_classifies_like_its_pixels(tmp_path, checkpoint, cli):
    photo = _photo("coffee.png")
    plain = tmp_path / "plain.png"
    photo.save(plain)
    names = []
    for kind in ("icc", "xmp_itxt", "ztxt", "ztxt_after_pixels"):
        for inflated in (2**20 + 1, 3 * 2**20, 20 * 2**20):  # past Pillow's default 1 MiB
            data = _png_with_metadata(photo, kind, inflated)
            assert len(data) < 400_000, "a normal-sized file: the metadata is compressed"
            name = f"{kind}_{inflated}.png"
            (tmp_path / name).write_bytes(data)
            names.append(name)
    res = cli(plain, *(tmp_path / n for n in names), "--arch", "resnet18", "--weights", checkpoint("resnet18"),
              "--topk", "5", "-f", "jsonl")
    records = res.jsonl()
    assert [os.path.basename(r["path"]) for r in records] == ["plain.png", *names]
    failed = [f"{os.path.basename(r['path'])}: {r['error']}" for r in records if "error" in r]
    assert not failed and res.code == 0, "\n".join(failed)
    want = _top5(records[0])
    for rec in records[1:]:
        got = _top5(rec)
        assert got[0] == want[0] and max(abs(a - b) for a, b in zip(got[1], want[1])) < 1e-6, rec["path"]


def test_pixel_bombs_and_zip_bombs_in_metadata_are_still_refused(tmp_path, checkpoint, cli):
    from resnet_cli.inputs.images import MAX_PIXELS, METADATA_MAX

    w = 12_000
    h = MAX_PIXELS // w + 1  # one row past the limit
    Image.new("1", (w, h)).save(tmp_path / "pixel_bomb.png")
    assert (tmp_path / "pixel_bomb.png").stat().st_size < 2_000_000
    photo = _photo()
    info = PngImagePlugin.PngInfo()
    info.add(b"zTXt", b"Comment\0\0" + zlib.compress(b"\0" * (METADATA_MAX + 2**20), 9))
    photo.save(tmp_path / "metadata_bomb.png", pnginfo=info)
    info = PngImagePlugin.PngInfo()
    for _ in range(3):  # text chunks each under the limit, together over it
        info.add(b"zTXt", b"Comment\0\0" + zlib.compress(b"\0" * (METADATA_MAX // 2), 9))
    photo.save(tmp_path / "many_text_chunks.png", pnginfo=info)
    names = ["pixel_bomb.png", "metadata_bomb.png", "many_text_chunks.png"]
    res = cli(*(tmp_path / n for n in names), "--arch", "resnet18", "--weights", checkpoint("resnet18"),
              "-f", "jsonl")
    records = res.jsonl()
    assert res.code == 1 and [os.path.basename(r["path"]) for r in records] == names
    for rec in records:
        assert rec.get("error", {}).get("type") == "decompression_bomb", rec
    assert "pixels" in records[0]["error"]["message"]
    assert "metadata" in records[1]["error"]["message"] and "metadata" in records[2]["error"]["message"]
