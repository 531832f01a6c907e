"""Deterministic benchmark image sets, generated from the sample photos (nothing to download).

- imagenet: 512 JPEGs of about 500x375 (ImageNet's typical size), quality 90, crops and flips of the photos.
- 12mp: 48 JPEGs of 4000x3000 (a phone photo), quality 92, the photos upscaled with mild noise-free detail.
- tiny: N small JPEGs (64x48) for the memory test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix.lower() in (".jpg", ".png"))


def _variants(size: tuple[int, int], count: int):
    bases = [Image.open(p).convert("RGB") for p in PHOTOS]
    w, h = size
    for i in range(count):
        img = bases[i % len(bases)]
        # a different window and scale per image, so no two files are the same
        scale = 1.0 + (i % 7) * 0.08
        big = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BICUBIC)
        x = (i * 37) % max(1, big.width - min(big.width, w) + 1)
        y = (i * 53) % max(1, big.height - min(big.height, h) + 1)
        crop = big.crop((x, y, x + min(big.width, w), y + min(big.height, h)))
        if crop.size != (w, h):
            crop = crop.resize((w, h), Image.Resampling.BICUBIC)
        if i % 2:
            crop = ImageOps.mirror(crop)
        yield i, crop


def make_set(kind: str, folder: Path, count: int | None = None) -> Path:
    """Write the set into `folder` once; a complete folder is reused."""
    size, default, quality = {"imagenet": ((500, 375), 512, 90), "12mp": ((4000, 3000), 48, 92),
                              "tiny": ((64, 48), 10_000, 85)}[kind]
    count = count or default
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    for i, img in _variants(size, count):
        img.save(folder / f"{kind}_{i:05d}.jpg", quality=quality)
    return folder


if __name__ == "__main__":
    out = make_set(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    print(out)
