"""A labelled image set with known problems, made from the sample photos, for `audit`'s tests (and the example
in docs/audit.md).

Three classes, each with two distinct source photos (the seeded stand-in network's features barely tell
different photos apart, but do tell one photo's lightly augmented copies from another's): `a` (astronaut,
camera), `b` (chelsea, coffee), `c` (grace_hopper, rocket), COPIES light augmentations of each (a crop of 85-100 %
of the area, a mirror, +-8 % brightness). Then, planted:
- a seeded 10 % of the labels flipped to another class (the file moved to that class's folder);
- an exact copy and a JPEG re-encode (quality 60, 97 % size) of two images, each filed under another class;
- two out-of-distribution images: a flat grey frame and uniform noise.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from checkpoints import PHOTOS

CLASSES = {"a": ("astronaut", "camera"), "b": ("chelsea", "coffee"), "c": ("grace_hopper", "rocket")}
COPIES = 16
SIZE = (160, 120)


@dataclass
class AuditSet:
    folder: Path
    labels: dict[str, str] = field(default_factory=dict)  # relative path -> given label (class folder)
    truth: dict[str, str] = field(default_factory=dict)  # relative path -> the class of its source photo
    flipped: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (original, planted copy)
    ood: list[str] = field(default_factory=list)


def _augment(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    share = rng.uniform(0.85, 1.0) ** 0.5
    cw, ch = int(w * share), int(h * share)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x, y, x + cw, y + ch)).resize(SIZE, Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return ImageEnhance.Brightness(out).enhance(rng.uniform(0.92, 1.08))


def build(folder: Path, seed: int = 0, copies: int = COPIES) -> AuditSet:
    """Write the set into `folder` (class folders a, b, c) and say what was planted where."""
    rng = random.Random(seed)
    by_stem = {p.stem: p for p in PHOTOS}
    made = AuditSet(folder)
    names = []
    for label, stems in CLASSES.items():
        (folder / label).mkdir(parents=True)
        for stem in stems:
            source = Image.open(by_stem[stem]).convert("RGB")
            for i in range(copies):
                name = f"{stem}_{i:02d}.jpg"
                _augment(source, rng).save(folder / label / name, quality=90)
                names.append((label, name))
                made.truth[f"{label}/{name}"] = label
    flips = rng.sample(range(len(names)), round(0.1 * len(names)))
    for k in sorted(flips):
        label, name = names[k]
        new = rng.choice([c for c in CLASSES if c != label])
        shutil.move(folder / label / name, folder / new / name)
        made.truth[f"{new}/{name}"] = made.truth.pop(f"{label}/{name}")
        made.flipped.append(f"{new}/{name}")
        names[k] = (new, name)
    kept = [n for k, n in enumerate(names) if k not in set(flips)]
    (la, na), (lb, nb) = kept[3], kept[len(kept) // 2 + 5]
    copy_to = next(c for c in CLASSES if c != la)
    shutil.copy(folder / la / na, folder / copy_to / f"copy_of_{na}")
    made.truth[f"{copy_to}/copy_of_{na}"] = la
    made.duplicates.append((f"{la}/{na}", f"{copy_to}/copy_of_{na}"))
    reencode_to = next(c for c in CLASSES if c not in (lb, copy_to)) if lb != copy_to else next(
        c for c in CLASSES if c != lb)
    img = Image.open(folder / lb / nb)
    img.resize((int(SIZE[0] * 0.97), int(SIZE[1] * 0.97)), Image.Resampling.BICUBIC).save(
        folder / reencode_to / f"reencoded_{nb}", quality=60)
    made.truth[f"{reencode_to}/reencoded_{nb}"] = lb
    made.duplicates.append((f"{lb}/{nb}", f"{reencode_to}/reencoded_{nb}"))
    Image.new("RGB", SIZE, (128, 128, 128)).save(folder / "a" / "zz_grey_frame.png")
    noise = Image.effect_noise(SIZE, 120).convert("RGB")
    noise.save(folder / "c" / "zz_noise.png")
    made.ood = ["a/zz_grey_frame.png", "c/zz_noise.png"]
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            made.labels[rel] = rel.split("/")[0]
    return made
