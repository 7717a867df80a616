"""Procedural drawing for the synthetic data: shapes, textures, cluttered backgrounds, posed objects.

Everything takes a `numpy.random.Generator` and uses nothing else random, so an image is a pure
function of its generator's seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from lightning_modules.data.synth_classes import COLOUR_NAMES, COLOURS, TEXTURES, ClassSpec

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive


# --- shapes: unit coordinates, centre (0, 0), extent [-1, 1] --------------------------------------


JPEG_QUALITY = 90  # every generated JPEG (classification and detection sets)


def _regular(k: int, r: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * i / k), r * math.sin(phase + 2 * math.pi * i / k)) for i in range(k)]


def _star(k: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * k):
        r = 1.0 if i % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * i / k
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return list(zip((x / 17).tolist(), ((y + 2.5) / 17).tolist(), strict=True))


_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(x, y + 0.2) for x, y in _regular(3, 1.1)],
    "star": _star(),
    "cross": [
        (-0.3, -1),
        (0.3, -1),
        (0.3, -0.3),
        (1, -0.3),
        (1, 0.3),
        (0.3, 0.3),
        (0.3, 1),
        (-0.3, 1),
        (-0.3, 0.3),
        (-1, 0.3),
        (-1, -0.3),
        (-0.3, -0.3),
    ],
    "hexagon": _regular(6),
    "rhombus": [(0, -1), (0.55, 0), (0, 1), (-0.55, 0)],
    "heart": _heart(),
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)],
    "tee": [(-1, -1), (1, -1), (1, -0.45), (0.27, -0.45), (0.27, 1), (-0.27, 1), (-0.27, -0.45), (-1, -0.45)],
    "chevron": [(-1, -0.75), (0, 0.2), (1, -0.75), (1, -0.05), (0, 0.9), (-1, -0.05)],
    "bowtie": [(-1, -0.8), (0, -0.12), (1, -0.8), (1, 0.8), (0, 0.12), (-1, 0.8)],
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, w: int, h: int) -> None:
    """Draw `shape` in white, filling a w x h canvas (black background)."""

    def px(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [((x + 1) / 2 * (w - 1), (y + 1) / 2 * (h - 1)) for x, y in pts]

    def ellipse(r: float, fill: int, dx: float = 0.0) -> None:
        (x0, y0), (x1, y1) = px([(-r + dx, -r), (r + dx, r)])
        draw.ellipse((x0, y0, x1, y1), fill=fill)

    if shape in _POLYGONS:
        draw.polygon(px(_POLYGONS[shape]), fill=255)
    elif shape == "disk":
        ellipse(1.0, 255)
    elif shape == "ring":
        ellipse(1.0, 255)
        ellipse(0.55, 0)
    elif shape == "crescent":
        ellipse(1.0, 255)
        ellipse(0.85, 0, dx=0.5)
    elif shape == "semicircle":
        (x0, y0), (x1, y1) = px([(-1, -0.5), (1, 1.5)])
        draw.pieslice((x0, y0, x1, y1), 180, 360, fill=255)
    elif shape == "frame":
        draw.rectangle(px([(-0.9, -0.9), (0.9, 0.9)]), fill=255)  # type: ignore[arg-type]
        draw.rectangle(px([(-0.5, -0.5), (0.5, 0.5)]), fill=0)  # type: ignore[arg-type]
    else:
        raise KeyError(f"unknown shape {shape!r}")


def shape_mask(shape: str, w: int, h: int) -> Image.Image:
    """Anti-aliased mask (mode L) of `shape` stretched to w x h: drawn 4x larger, then box-filtered down."""
    ss = 4 if max(w, h) < 48 else 2
    big = Image.new("L", (w * ss, h * ss), 0)
    _draw_shape(ImageDraw.Draw(big), shape, w * ss, h * ss)
    return big.resize((w, h), Image.Resampling.BOX)


# --- textures ---------------------------------------------------------------------------------


def jitter_colour(name: str, rng: np.random.Generator) -> np.ndarray:
    """The named colour with per-image brightness and tint changes, as float32 RGB."""
    rgb = np.array(COLOURS[name], dtype=np.float32)
    return np.clip(rgb * rng.uniform(0.8, 1.12) + rng.uniform(-18, 18, 3), 0, 255).astype(np.float32)


def texture(kind: str, pri: np.ndarray, sec: np.ndarray | None, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A w x h float32 RGB fill pattern in the object's own frame (it rotates with the object)."""
    if kind == "solid" or sec is None:
        return np.broadcast_to(pri, (h, w, 3)).copy()
    scale = float(max(w, h))
    v, u = np.mgrid[0:h, 0:w].astype(np.float32) / scale
    if kind == "gradient":
        t = np.clip(u * scale / max(w - 1, 1), 0, 1)[..., None]
        return pri * (1 - t) + sec * t
    if kind == "stripes":
        n = rng.uniform(3.0, 5.0)
        m = (u * n) % 1.0 < 0.5
    elif kind == "checks":
        n = rng.uniform(2.5, 4.0)
        m = (np.floor(u * n) + np.floor(v * n)) % 2 == 0
    elif kind == "dots":
        n = rng.uniform(3.0, 4.5)
        fu, fv = (u * n) % 1.0 - 0.5, (v * n) % 1.0 - 0.5
        m = fu * fu + fv * fv > 0.3**2
    else:
        raise KeyError(f"unknown texture {kind!r}")
    return np.where(m[..., None], pri, sec)


# --- objects and scenes -----------------------------------------------------------------------


def render_object(
    shape: str, kind: str, pri: np.ndarray, sec: np.ndarray | None, size: int, rng: np.random.Generator
) -> tuple[Image.Image, Image.Image, Box]:
    """A posed object: (RGB patch, mask, box of the mask inside the patch). Pose = stretch + rotation."""
    stretch = rng.uniform(0.8, 1.0)
    w, h = (size, max(4, round(size * stretch))) if rng.random() < 0.5 else (max(4, round(size * stretch)), size)
    tex = Image.fromarray(np.clip(texture(kind, pri, sec, w, h, rng), 0, 255).astype(np.uint8))
    mask = shape_mask(shape, w, h)
    angle = float(rng.uniform(0, 360))
    tex = tex.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    box = mask.point(lambda a: 255 if a >= 96 else 0).getbbox() or (0, 0, 1, 1)
    return tex, mask, box


def photo_size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    """(width, height) like photos: mostly landscape 4:3 / 3:2 / 16:9, some portrait or square."""
    ratio = float(rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0, 5 / 4]))
    long_side = math.exp(rng.uniform(math.log(max(lo, 1) * ratio), math.log(hi)))
    long_side = min(hi, max(lo, round(long_side)))
    short_side = max(lo, round(long_side / ratio))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


def background(w: int, h: int, rng: np.random.Generator, avoid: tuple[str, ...] = ()) -> Image.Image:
    """Cluttered background: a muted two-colour gradient with distractor lines and blobs."""
    # Muted (greyish, tinted) so objects stand out at least a little, as photographed objects do.
    c1, c2 = rng.uniform(60, 200) + rng.uniform(-45, 45, 3), rng.uniform(60, 200) + rng.uniform(-45, 45, 3)
    a = rng.uniform(0, 2 * math.pi)
    ys, xs = np.ogrid[0:h, 0:w]
    t = (xs * math.cos(a) + ys * math.sin(a)) / max(w, h)
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6)).astype(np.float32)[..., None]
    img = Image.fromarray((c1 * (1 - t) + c2 * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    palette = [c for c in COLOUR_NAMES if c not in avoid]
    side = min(w, h)
    for _ in range(int(rng.integers(2, 9))):
        col = tuple(int(c) for c in jitter_colour(palette[int(rng.integers(len(palette)))], rng))
        x0, y0, x1, y1 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)
        draw.line((x0, y0, x1, y1), fill=col, width=int(rng.integers(1, max(2, side // 40) + 1)))
    for _ in range(int(rng.integers(1, 6))):
        col = tuple(int(c) for c in jitter_colour(palette[int(rng.integers(len(palette)))], rng))
        draw.polygon(_blob(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.12) * side, rng), fill=col)
    return img


def _blob(cx: float, cy: float, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """An irregular, wobbly blob: a circle whose radius varies with low harmonics (never a clean disk)."""
    t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    k = np.arange(2, 5)[:, None]
    wobble = (rng.uniform(0.12, 0.3, (3, 1)) * np.sin(k * t + rng.uniform(0, 2 * np.pi, (3, 1)))).sum(axis=0)
    rr = r * (1 + wobble)
    sx, sy = rng.uniform(0.6, 1.4, 2)
    return list(zip((cx + sx * rr * np.cos(t)).tolist(), (cy + sy * rr * np.sin(t)).tolist(), strict=True))


def add_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Sensor-like Gaussian noise over the whole picture (objects included)."""
    arr = np.asarray(img, dtype=np.float32)
    sigma = rng.uniform(3, 14)
    arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * sigma
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def classification_image(
    spec: ClassSpec, rng: np.random.Generator, lo: int = 64, hi: int = 400
) -> tuple[Image.Image, Box]:
    """One photo-like image of class `spec`, with the object's box."""
    w, h = photo_size(rng, lo, hi)
    img = background(w, h, rng, avoid=spec.colours)
    pri = jitter_colour(spec.primary, rng)
    sec = jitter_colour(spec.secondary, rng) if spec.secondary else None
    size = max(12, round(min(w, h) * rng.uniform(0.35, 0.68)))  # <= 0.68 * sqrt(2) < 1: always fits once rotated
    tex, mask, (bx0, by0, bx1, by1) = render_object(spec.shape, spec.texture, pri, sec, size, rng)
    x = int(rng.integers(-bx0, max(-bx0, w - bx1) + 1))
    y = int(rng.integers(-by0, max(-by0, h - by1) + 1))
    img.paste(tex, (x, y), mask)
    box = (max(0, x + bx0), max(0, y + by0), min(w, x + bx1), min(h, y + by1))
    return add_noise(img, rng), box


def random_look(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    """A random texture and two distinct jittered colours (detection objects vary in look)."""
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    i, j = rng.choice(len(COLOUR_NAMES), size=2, replace=False)
    return kind, jitter_colour(COLOUR_NAMES[int(i)], rng), jitter_colour(COLOUR_NAMES[int(j)], rng)


def class_look(spec: ClassSpec, rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray | None]:
    """The texture and jittered colours of class `spec` (as its classification images are drawn)."""
    pri = jitter_colour(spec.primary, rng)
    return spec.texture, pri, jitter_colour(spec.secondary, rng) if spec.secondary else None


def _overlap_ok(box: Box, boxes: list[Box]) -> bool:
    """Allow overlaps, but keep at least half of every object (old or new) uncovered."""
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        if inter > 0.5 * (b[2] - b[0]) * (b[3] - b[1]) or inter > 0.5 * (box[2] - box[0]) * (box[3] - box[1]):
            return False
    return True


# Detection styles: image sides and object sizes. "mixed" (the embedded default since generator 3; since
# generator 4 its classes are ImageNet-style ClassSpecs, drawn with their own looks):
# 192-256 px images (letterboxed to the detector's 192-px input: x0.75-1), objects drawn in COCO's mix
# of areas at that input (41% small < 32^2, 34% medium, 24% large > 96^2): 37% at 12-31 px, 28% at
# 36-100 px, 35% at 128 px up to 0.8 of the short side (large ones find no free place more often).
# "small" (generator 2, kept to reproduce the look-alike benchmark of issue 12: five bare shapes, each
# object in a random look, so only the silhouette tells the classes apart): 160-320 px images, 30%
# of the objects 8-16 px, the rest 15-45% of the short side.
DETECTION_STYLES = {"mixed": (192, 256), "small": (160, 320)}


def object_side(style: str, rng: np.random.Generator, w: int, h: int) -> int:
    """The side of one detection object, in image pixels."""
    if style == "small":
        if rng.random() < 0.3:
            return int(rng.integers(8, 17))
        return max(18, round(min(w, h) * rng.uniform(0.15, 0.45)))
    u = rng.random()
    if u < 0.37:
        return int(rng.integers(12, 32))
    if u < 0.65:
        return int(rng.integers(36, 101))
    return int(rng.integers(128, max(128, round(min(w, h) * 0.8)) + 1))


def detection_image(
    n_objects: int, classes: Sequence[str | ClassSpec], rng: np.random.Generator, style: str = "mixed"
) -> tuple[Image.Image, list[tuple[int, Box]]]:
    """A scene with up to `n_objects` objects (some small, some overlapping) and their (class, box) labels.

    A class given as a ClassSpec is drawn with its own texture and colours (jittered per object); one given
    as a bare shape name gets a random look per object, so only its silhouette tells it apart."""
    lo, hi = DETECTION_STYLES[style]
    w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    img = background(w, h, rng)
    labels: list[tuple[int, Box]] = []
    for _ in range(n_objects):
        cls = int(rng.integers(len(classes)))
        spec = classes[cls]
        if isinstance(spec, ClassSpec):
            shape, (kind, pri, sec) = spec.shape, class_look(spec, rng)
        else:
            shape, (kind, pri, sec) = spec, random_look(rng)
        size = object_side(style, rng, w, h)
        tex, mask, (bx0, by0, bx1, by1) = render_object(shape, kind, pri, sec, size, rng)
        for _attempt in range(20):
            if labels and rng.random() < 0.4:  # next to an earlier object, so that they overlap
                ref = labels[int(rng.integers(len(labels)))][1]
                cx = (ref[0] + ref[2]) / 2 + rng.uniform(-0.7, 0.7) * (ref[2] - ref[0] + bx1 - bx0) / 2
                cy = (ref[1] + ref[3]) / 2 + rng.uniform(-0.7, 0.7) * (ref[3] - ref[1] + by1 - by0) / 2
                x, y = round(cx - (bx0 + bx1) / 2), round(cy - (by0 + by1) / 2)
            else:
                x = int(rng.integers(-bx0, max(-bx0, w - bx1) + 1))
                y = int(rng.integers(-by0, max(-by0, h - by1) + 1))
            box = (x + bx0, y + by0, x + bx1, y + by1)
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h
            if inside and _overlap_ok(box, [b for _, b in labels]):
                img.paste(tex, (x, y), mask)
                labels.append((cls, box))
                break
    return add_noise(img, rng), labels
