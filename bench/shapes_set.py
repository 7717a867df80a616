"""A plain YOLO-format set of simple shapes, as a user would bring one (not made by `visionflow data synth`).

300 train / 60 val JPEGs of 160-320 px, 3 classes (circle, square, triangle), 1-5 non-overlapping filled
shapes per image on a noisy background; a quarter of the shapes are 8-24 px, the rest up to half the
short side. Written with PIL only, as `images/{train,val}`, `labels/{train,val}` and `data.yaml`:

    .venv/bin/python bench/shapes_set.py OUT [--train 300] [--val 60] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def _shape_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    short = min(w, h)
    size = int(rng.integers(8, 25)) if rng.random() < 0.25 else int(rng.integers(25, short // 2 + 1))
    x = int(rng.integers(0, w - size + 1))
    y = int(rng.integers(0, h - size + 1))
    return x, y, x + size, y + size


def _apart(box, boxes) -> bool:
    return all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def scene(rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
    w, h = int(rng.integers(160, 321)), int(rng.integers(160, 321))
    base = rng.integers(60, 200, 3)
    noise = rng.normal(0, 25, (h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    labels: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(30):
            box = _shape_box(rng, w, h)
            if _apart(box, [b for _, b in labels]):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        x0, y0, x1, y1 = box
        fill = _colour(rng)
        if CLASSES[cls] == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif CLASSES[cls] == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
        labels.append((cls, box))
    return img, labels


def write(out: Path, sizes: dict[str, int], seed: int) -> None:
    for split, n in sizes.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, len(split), i])
            img, labels = scene(rng)
            stem = f"{split}_{i:04d}"
            img.save(out / "images" / split / f"{stem}.jpg", quality=90)
            w, h = img.size
            lines = [
                f"{c} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
                for c, b in labels
            ]
            (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    names = "[" + ", ".join(CLASSES) + "]"
    splits = "".join(f"{s}: images/{s}\n" for s in sizes)
    (out / "data.yaml").write_text(f"path: .\n{splits}nc: {len(CLASSES)}\nnames: {names}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    write(a.out, {"train": a.train, "val": a.val}, a.seed)
    print(f"wrote {a.train} train / {a.val} val images to {a.out}")


if __name__ == "__main__":
    main()
