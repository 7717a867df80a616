"""Decode, check and convert one image file: every way a file can be bad becomes a short reason string."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# OS clutter that is never a sample; anything else in a class folder is checked and, if bad, rejected.
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


class BadImage(Exception):
    """A file that cannot be used as an image; str() is the reason for the manifest."""


def is_candidate(path: Path) -> bool:
    """True for files that should be checked as images (not hidden files, not OS clutter)."""
    return not path.name.startswith(".") and path.name.lower() not in IGNORED_NAMES


def is_class_folder(path: Path) -> bool:
    """True for folders that can be a class: not hidden, not tool clutter like __MACOSX or __pycache__."""
    return path.is_dir() and not path.name.startswith((".", "__"))


def open_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Fully decode `path` into an RGB image, or raise BadImage with the reason.

    `draft_size` lets the JPEG decoder downscale by 1/2..1/8 while decoding (much faster) as long as the
    shorter side stays >= draft_size. The whole file is still read, so truncation is still caught.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if draft_size is not None and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.load()  # forces a full decode: truncated files raise here
                return to_rgb(_upright(img))
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"image too large: {e}") from None
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


def load_chw(path: str | Path, size: int) -> np.ndarray:
    """Decode, convert to RGB, resize+centre-crop: a uint8 array [3, size, size]. Raises BadImage."""
    img = resize_center_crop(open_rgb(path, draft_size=size), size)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
