"""The internal form every detection reader returns, and the helpers they share: box checks, image probing,
splits, per-file error handling."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS, BadImage, open_image
from lightning_modules.errors import DataError, VisionflowError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "val", "test")
CLIP_TOLERANCE_PX = 1.0  # boxes this far outside the image are clipped, further out rejected


@dataclass
class DetImage:
    """One image and its kept boxes (xyxy, pixels)."""

    path: Path
    width: int
    height: int
    boxes: list[list[float]]
    labels: list[int]
    split: str
    difficult: list[bool] = field(default_factory=list)
    background: bool = False  # no annotation at all in the source (no label file, empty file, ...)


@dataclass
class Rejection:
    """A dropped box (line = file line / COCO annotation id or index / VOC object number) or image (line None)."""

    path: str
    line: int | None
    reason: str

    def as_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "reason": self.reason}


@dataclass
class DetectionSource:
    classes: list[str]
    images: list[DetImage]
    rejected: list[Rejection]
    boxes_seen: int = 0  # every box entry met, kept or not: the base of the rejected fraction
    images_seen: int = 0


def check_box(box: list[float], width: int, height: int) -> tuple[list[float] | None, str | None]:
    """Validate an xyxy pixel box; clip it when at most 1 px outside. Returns (box, None) or (None, reason)."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return None, f"non-finite coordinate in {box}"
    if x2 <= x1 or y2 <= y1:
        return None, f"zero or negative area box {_fmt(box)}"
    tol = CLIP_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        return None, f"box {_fmt(box)} outside the {width}x{height} image"
    clipped = [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, f"box {_fmt(box)} has zero area inside the {width}x{height} image"
    return clipped, None


def _fmt(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def image_size(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from the image header; raises OSError when missing or unreadable, BadImage when the
    header claims more than `max_pixels` pixels (nothing is decoded either way)."""
    with open_image(path, max_pixels) as im:
        return im.size


def probe_size(path: Path, max_pixels: int, out: DetectionSource) -> tuple[int, int] | None:
    """The image's (width, height), or None after recording why it cannot be used."""
    if not path.is_file():  # also keeps a FIFO named x.jpg from blocking the header read forever
        reason = f"missing or unreadable image: {'not a regular file' if path.exists() else 'no such file'}"
    else:
        try:
            return image_size(path, max_pixels)
        except BadImage as e:
            reason = str(e)
        except OSError as e:
            reason = f"missing or unreadable image: {e}"
    out.rejected.append(Rejection(str(path), None, reason))
    return None


def dropped_with(n_boxes: int) -> str:
    """Suffix for an image rejection that also drops labels: those boxes are never dropped silently."""
    return f" ({n_boxes} box{'es' if n_boxes != 1 else ''} dropped with it)" if n_boxes else ""


@contextmanager
def rejecting_errors(
    rejected: list[Rejection], path: str | Path, line: int | None = None, what: str = ""
) -> Iterator[None]:
    """Turn any unexpected exception in one file's work into a Rejection, so one odd file (unreadable, odd
    structure, corrupt past its header) never stops the whole prep. Whole-dataset errors still propagate."""
    try:
        yield
    except VisionflowError:
        raise
    except Exception as e:  # noqa: BLE001 - the reason names the exception; the prep goes on
        message = str(e)
        message = message if len(message) <= 300 else message[:300] + "..."  # e.g. a 5000-character file name
        rejected.append(Rejection(str(path), line, f"{what}{type(e).__name__}: {message}"))


def seeded_split(keys: list, val_fraction: float, seed: int) -> dict:
    """Map each key to "train"/"val": a seeded shuffle of the sorted keys, val gets round(n * fraction)."""
    try:
        order = sorted(keys)
    except TypeError:  # ids of mixed types (COCO ints and strings): any fixed order will do
        order = sorted(keys, key=repr)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if 0 < val_fraction and n_val == 0 and len(order) > 1:
        n_val = 1  # a tiny set still gets a val image
    return {k: ("val" if i < n_val else "train") for i, k in enumerate(order)}


def as_int(value) -> int | None:
    """An integer from an int, an integral float or a decimal string; None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def read_text(path: Path, what: str) -> str:
    """A whole-dataset text file (data.yaml, an image list, a split file) as UTF-8, or DataError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"{what} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise DataError(path, f"cannot read the {what}: {e}") from None
