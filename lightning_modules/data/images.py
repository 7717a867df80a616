"""Decode, check and convert one image file: every way a file can be bad becomes a short reason string."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lightning_modules.errors import DataError

# OS clutter that is never a sample; anything else in a class folder is checked and, if bad, rejected.
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}

# Our own limit on width * height, checked from the header before any pixel is decoded. Far above real photos
# (a 61 MP camera frame passes) and far below what takes the machine down (13000x13000 RGB is 0.5 GB decoded).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

# PIL's own guard (Image.MAX_IMAGE_PIXELS) is a module global: we switch it off while reading a header so that
# our limit alone decides, under a lock so two threads can never restore each other's value wrongly.
_PIL_GUARD_LOCK = threading.Lock()


class BadImage(Exception):
    """A file that cannot be used as an image; str() is the reason for the manifest."""


def is_candidate(path: Path) -> bool:
    """True for files that should be checked as images (not hidden files, not OS clutter)."""
    return not path.name.startswith(".") and path.name.lower() not in IGNORED_NAMES


def is_class_folder(path: Path) -> bool:
    """True for folders that can be a class: not hidden, not tool clutter like __MACOSX or __pycache__."""
    return path.is_dir() and not path.name.startswith((".", "__"))


def too_many_pixels(size: tuple[int, int], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """The reason an image of `size` (width, height) is refused, or None when it is within `max_pixels`."""
    w, h = size
    if w * h <= max_pixels:
        return None
    return f"image is {w}x{h} ({w * h / 1e6:.1f} MP), over the max_image_pixels limit of {max_pixels / 1e6:g} MP"


@contextmanager
def open_image(source: str | Path | BinaryIO, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """Open an image reading only its header; raise BadImage when it has more than `max_pixels` pixels.

    Nothing is decoded yet (call `.load()` or convert inside the block), so a 60000x60000 "decompression bomb"
    costs a few bytes of reading. Missing or unrecognised files raise OSError (UnidentifiedImageError).
    """
    with _PIL_GUARD_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with img:
        reason = too_many_pixels(img.size, max_pixels)
        if reason:
            raise BadImage(reason)
        with warnings.catch_warnings():
            # Our limit was checked above; PIL re-checks some formats while decoding (TIFF tiles) and would
            # only warn about a size we already accepted.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield img


def open_rgb(
    path: str | Path, draft_size: int | None = None, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Fully decode `path` into an RGB image, or raise BadImage with the reason.

    `draft_size` lets the JPEG decoder downscale by 1/2..1/8 while decoding (much faster) as long as the
    shorter side stays >= draft_size. The whole file is still read, so truncation is still caught.
    An image over `max_pixels` (width * height, from the header) is refused before it is decoded.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with open_image(path, max_pixels) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()  # forces a full decode: truncated files raise here
            return to_rgb(_upright(img))
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except Image.DecompressionBombError as e:
        # Only when max_pixels is set above twice PIL's own limit: PIL still refuses some decodes itself.
        raise BadImage(f"image too large for the decoder: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL reports truncation and corrupt data as OSError ("image file is truncated", "broken data stream").
        raise BadImage(f"corrupt or truncated: {e}") from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos); a broken EXIF block is no reason to reject the pixels."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, F, ...) to RGB; transparency goes onto white."""
    if img.mode == "RGB":
        return img
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # High bit-depth greyscale: stretch to 0..255 (plain convert() would clip to white).
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`, then crop the centre `size` x `size` square.

    Done as one resize of the centre square (`box`): the same pixels, without resampling the parts cropped away.
    Bilinear with antialiasing, like torchvision's Resize.
    """
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side), reducing_gap=3.0)


def load_chw(path: str | Path, size: int, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode, convert to RGB, resize+centre-crop: a uint8 array [3, size, size]. Raises BadImage."""
    img = resize_center_crop(open_rgb(path, draft_size=size, max_pixels=max_pixels), size)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


PREDICT_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def image_files(paths: list[str | Path]) -> list[Path]:
    """The image files named, or found under the folders named (sorted), for `visionflow predict`."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in PREDICT_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(p, "no such image file or folder")
    if not files:
        raise DataError(Path(paths[0]) if paths else Path("."), "no images found")
    return files
