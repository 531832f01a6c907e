"""Odd but valid image files made from colour photos, each checked through the CLI against torchvision.

The reference is what the user sees: torchvision's resnet18 with the same state dict, in eval mode, and
`ResNet18_Weights.DEFAULT.transforms()` applied to the file *explicitly converted* with Pillow (EXIF:
`ImageOps.exif_transpose` then RGB; alpha modes: RGB, the alpha dropped; CMYK: RGB; GIF/TIFF: frame 0;
16-bit: the 8-bit picture, v >> 8, the rule in resnet_cli/images.py). The CLI must give the same top-5 indices
in order and probabilities within 1e-4.

Every file is built from a colour photo, so a swapped channel, an inverted CMYK or a lost palette would show;
and for every file the test also checks that a plausible wrong reading (channels swapped, CMYK inverted,
orientation ignored, second frame, alpha composited, 16 bits clipped) gives a clearly different answer, so the
comparison can really fail.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageOps

from checkpoints import SAMPLES

TOL = 1e-4  # the product's promise against torchvision
WRONG_MIN = 1e-3  # a wrong reading must move some probability by at least 10x the tolerance (or reorder top-5)


def _load(name: str) -> Image.Image:
    img = Image.open(SAMPLES / name)
    img.load()
    return img.convert("RGB")


def _is_grey(img: Image.Image) -> bool:
    """True when the RGB channels are (nearly) equal: such a picture cannot show a channel swap."""
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    return float(np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean()) < 8.0


def _alpha_ramp(size: tuple[int, int]) -> Image.Image:
    """An alpha channel from fully transparent (left) to opaque (right): alpha handling matters everywhere."""
    w, h = size
    ramp = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))
    return Image.fromarray(ramp, "L")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _swap_channels(img: Image.Image) -> Image.Image:
    r, g, b = img.convert("RGB").split()
    return Image.merge("RGB", (b, g, r))


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _open(path) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img


def _explicit_rgb(img: Image.Image) -> Image.Image:
    with warnings.catch_warnings():  # P with transparency: Pillow suggests RGBA; the colours are the same
        warnings.simplefilter("ignore")
        return img.convert("RGB")


def make_colour_corpus(folder) -> dict[str, dict]:
    """Write the files; returns {name: {"source": colour photo it came from, "mode": mode Pillow opens it in,
    "ref": the explicitly converted RGB image, "wrong": [plausible wrong readings], "grey": greyscale by
    nature}}. The references are computed from the written files, as a user's script would open them."""
    folder.mkdir(parents=True, exist_ok=True)
    chelsea, coffee, astronaut = _load("chelsea.png"), _load("coffee.png"), _load("astronaut.png")
    sources = {"chelsea.png": chelsea, "coffee.png": coffee, "astronaut.png": astronaut}
    files: dict[str, tuple[bytes, str]] = {}

    files["cmyk.jpg"] = (_save(chelsea.convert("CMYK"), "JPEG", quality=95), "chelsea.png")
    files["palette_P.png"] = (_save(coffee.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"),
                              "coffee.png")
    pt = chelsea.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    common = max(pt.getcolors(256))[1]  # the most used palette entry is the transparent one
    files["palette_transparency.png"] = (_save(pt, "PNG", transparency=common), "chelsea.png")
    la = coffee.convert("L")
    la.putalpha(_alpha_ramp(la.size))
    files["grey_alpha_LA.png"] = (_save(la, "PNG"), "coffee.png")
    rgba = astronaut.copy()
    rgba.putalpha(_alpha_ramp(rgba.size))
    files["rgba.png"] = (_save(rgba, "PNG"), "astronaut.png")
    files["photo.webp"] = (_save(coffee, "WEBP", quality=90), "coffee.png")
    wa = chelsea.copy()
    wa.putalpha(_alpha_ramp(wa.size))
    files["rgba_lossless.webp"] = (_save(wa, "WEBP", lossless=True, exact=True), "chelsea.png")
    # 16-bit greyscale with real information in the low byte (noise), so a rounding rule other than the
    # documented v >> 8 would show as much as clipping to white would.
    grey8 = np.asarray(astronaut.convert("L"), dtype=np.uint16)
    low = np.random.default_rng(0).integers(0, 256, grey8.shape, dtype=np.uint16)
    g16 = (grey8 << 8) | low
    files["grey16.png"] = (_save(Image.frombytes("I;16", astronaut.size, g16.astype("<u2").tobytes()), "PNG"),
                           "astronaut.png")
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        files[f"exif_orientation_{orientation}.jpg"] = (_save(chelsea, "JPEG", quality=92, exif=exif.tobytes()),
                                                        "chelsea.png")
    second = astronaut.resize(coffee.size)
    files["animated.gif"] = (_save(coffee, "GIF", save_all=True, append_images=[second], duration=100, loop=0),
                             "coffee.png")
    files["multipage.tiff"] = (_save(chelsea, "TIFF", save_all=True, append_images=[astronaut.resize(chelsea.size)]),
                               "chelsea.png")

    corpus: dict[str, dict] = {}
    for name, (data, source) in files.items():
        path = folder / name
        path.write_bytes(data)
        img = _open(path)
        mode = img.mode
        wrong: list[Image.Image] = []
        grey = False
        if name.startswith("exif_"):
            ref = ImageOps.exif_transpose(img).convert("RGB")
            wrong.append(img.convert("RGB"))  # the orientation ignored
        elif name in ("animated.gif", "multipage.tiff"):
            img.seek(0)
            ref = img.convert("RGB")
            img.seek(1)
            wrong.append(img.convert("RGB"))  # the last frame instead of the first
        elif name == "grey16.png":
            a = np.asarray(img, dtype=np.int64)
            assert a.max() > 255, "the 16-bit file must hold 16-bit values"
            ref = Image.fromarray((a >> 8).astype(np.uint8), "L").convert("RGB")
            wrong.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB"))  # clipped
            grey = True
        else:
            ref = _explicit_rgb(img)
            if name == "cmyk.jpg":
                wrong.append(ImageChops.invert(img).convert("RGB"))  # an inverted (Adobe) CMYK reading
            if "A" in mode or "transparency" in img.info:
                wrong.append(_on_white(img))  # alpha composited instead of dropped
            grey = mode == "LA"
        if not grey:
            wrong.append(_swap_channels(ref))
        corpus[name] = {"path": path, "source": sources[source], "mode": mode, "ref": ref, "wrong": wrong,
                        "grey": grey}
    return corpus


@pytest.fixture(scope="module")
def colour_corpus(tmp_path_factory):
    return make_colour_corpus(tmp_path_factory.mktemp("colour") / "odd")


def test_the_odd_files_come_from_colour_photos_and_keep_their_odd_modes(colour_corpus):
    """Guards the corpus itself: a swapped channel could not show on a grey picture."""
    want_modes = {"cmyk.jpg": "CMYK", "palette_P.png": "P", "palette_transparency.png": "P",
                  "grey_alpha_LA.png": "LA", "rgba.png": "RGBA", "photo.webp": "RGB", "rgba_lossless.webp": "RGBA",
                  "grey16.png": ("I;16", "I"), "animated.gif": ("P", "RGB"), "multipage.tiff": "RGB"}
    for name, c in colour_corpus.items():
        assert not _is_grey(c["source"]), f"{name}: its source photo is greyscale"
        if name in want_modes:
            assert c["mode"] in want_modes[name], (name, c["mode"])
        if c["grey"]:
            assert _is_grey(c["ref"]), name
        else:
            assert not _is_grey(c["ref"]), f"{name}: the file as the user sees it is greyscale"
    cmyk = np.asarray(colour_corpus["cmyk.jpg"]["ref"], dtype=np.int16)
    src = np.asarray(colour_corpus["cmyk.jpg"]["source"], dtype=np.int16)
    assert np.abs(cmyk - src).mean() < 6, "Pillow's own reading of the CMYK file must be the photo, not inverted"
    assert "transparency" in Image.open(colour_corpus["palette_transparency.png"]["path"]).info


def _torchvision_top5(model, tf, images: list[Image.Image]) -> list[tuple[list[int], list[float]]]:
    """Top-5 (indices, probabilities) per image; one batch (a batch changes float rounding only, far below
    the tolerance, and a single-image forward is ten times slower per image on the CPU)."""
    import torch

    with torch.inference_mode():
        probs = model(torch.stack([tf(img) for img in images])).softmax(dim=1)
        values, indices = probs.topk(5, dim=1)
    return list(zip(indices.tolist(), values.tolist()))


def _differs(a: tuple[list[int], list[float]], b: tuple[list[int], list[float]]) -> bool:
    return a[0] != b[0] or max(abs(x - y) for x, y in zip(a[1], b[1])) > WRONG_MIN


@pytest.mark.timeout(120)
def test_odd_colour_files_match_torchvision_on_the_explicitly_converted_image(colour_corpus, checkpoint, cli):
    import torch
    import torchvision

    ckpt = checkpoint("resnet18")
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tf = torchvision.models.ResNet18_Weights.DEFAULT.transforms()

    names = list(colour_corpus)
    res = cli(*(colour_corpus[n]["path"] for n in names), "--arch", "resnet18", "--weights", ckpt, "--topk", "5",
              "-f", "jsonl")
    assert res.code == 0, res.stderr
    records = res.jsonl()
    assert [os.path.basename(r["path"]) for r in records] == names

    refs = _torchvision_top5(model, tf, [colour_corpus[n]["ref"] for n in names])
    mismatches = []
    for name, rec, (indices, probs) in zip(names, records, refs):
        got_i = [t["index"] for t in rec["topk"]]
        got_p = [t["probability"] for t in rec["topk"]]
        if got_i != indices or any(abs(a - b) > TOL for a, b in zip(got_p, probs)):
            mismatches.append(f"{name}: cli {got_i} {[round(p, 5) for p in got_p]} "
                              f"!= torchvision {indices} {[round(p, 5) for p in probs]}")
    assert not mismatches, "\n".join(mismatches)

    # The comparison can fail: every plausible wrong reading of each file gives a clearly different answer.
    wrong = [(n, w) for n in names for w in colour_corpus[n]["wrong"]]
    assert {n for n, _ in wrong} == set(names)
    ref_of = dict(zip(names, refs))
    for (name, _), got in zip(wrong, _torchvision_top5(model, tf, [w for _, w in wrong])):
        assert _differs(got, ref_of[name]), f"{name}: a wrong reading gives the same answer; the check is blind"
