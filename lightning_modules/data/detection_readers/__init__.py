"""Detection readers: YOLO txt + data.yaml, COCO json and Pascal VOC xml -> one internal form.

Every reader returns a `DetectionSource`: class names, one `DetImage` per image (boxes xyxy in
pixels of the image as stored on disk), and a `Rejection` for every box or image it could not use.
A bad box is dropped and its image kept; a missing or unreadable image is dropped.

What a source file says is never trusted to stay inside the dataset: an image or label path (COCO
`file_name`, VOC `<filename>`, a YOLO list line, a symlink) that leads out of the dataset root is
rejected without being read. Problems with the dataset as a whole (a broken data.yaml, a COCO file
that is not a list of images, bad categories) raise DataError; anything that goes wrong with one
file becomes a Rejection, so one odd file never stops the whole prep.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lightning_modules.data.detection_readers.coco import read_coco
from lightning_modules.data.detection_readers.common import (
    CLIP_TOLERANCE_PX,
    IMAGE_SUFFIXES,
    SPLITS,
    DetectionSource,
    DetImage,
    Rejection,
    check_box,
    dropped_with,
    image_size,
    rejecting_errors,
    seeded_split,
)
from lightning_modules.data.detection_readers.paths import outside_root
from lightning_modules.data.detection_readers.voc import read_voc
from lightning_modules.data.detection_readers.yolo import read_yolo, yolo_label_path
from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS
from lightning_modules.errors import ConfigError

__all__ = [
    "CLIP_TOLERANCE_PX",
    "IMAGE_SUFFIXES",
    "READERS",
    "SPLITS",
    "DetImage",
    "DetectionSource",
    "Rejection",
    "check_box",
    "dropped_with",
    "image_size",
    "outside_root",
    "read_coco",
    "read_detection",
    "read_voc",
    "read_yolo",
    "rejecting_errors",
    "seeded_split",
    "yolo_label_path",
]

READERS: dict[str, Callable[..., DetectionSource]] = {"yolo": read_yolo, "coco": read_coco, "voc": read_voc}


def read_detection(
    src: Path, fmt: str, *, val_fraction: float = 0.2, seed: int = 0, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> DetectionSource:
    """Read SRC in format `fmt` (one of READERS)."""
    if fmt not in READERS:
        raise ConfigError(f"fmt: unknown detection format {fmt!r}; choose one of {sorted(READERS)}")
    return READERS[fmt](Path(src), val_fraction=val_fraction, seed=seed, max_image_pixels=max_image_pixels)
