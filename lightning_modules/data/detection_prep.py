"""Prepare a detection dataset (YOLO, COCO or VOC) into the one prepared form the trainers read.

OUT/{split}.json, OUT/images/<split>/*.png (RGB), OUT/manifest.json (classes, counts, rejected boxes,
YOLOv2/v3 anchors, duplicates, content hash), OUT/preview.png. Built in a staging folder and swapped in on success.

Each image is read once: its bytes are hashed (md5) and decoded from memory. The same bytes twice in a
split keep the first copy; the same bytes in train and a held-out split keep the train copy, so that no
validation or test image was seen in training.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_modules.data.anchors import ANCHOR_COUNTS, compute_anchors, letterbox_wh
from lightning_modules.data.detection_readers import (
    SPLITS,
    DetectionSource,
    DetImage,
    Rejection,
    dropped_with,
    read_detection,
    rejecting_errors,
)
from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS, BadImage, open_image
from lightning_modules.data.lineage import content_hash as lineage_hash
from lightning_modules.data.lineage import data_version
from lightning_modules.data.prep_settings import DETECTION
from lightning_modules.data.previews import save_grid
from lightning_modules.data.staging import PRODUCER, staged_output
from lightning_modules.errors import ConfigError, DataError
from lightning_modules.reporting.progress import track

log = logging.getLogger("visionflow")
PREVIEW_IMAGES = 8


def prep_detection(
    src: Path,
    out: Path,
    *,
    fmt: str = DETECTION.format,
    val_fraction: float = DETECTION.val_fraction,
    max_rejected_fraction: float = DETECTION.max_rejected_fraction,
    anchor_image_size: int = DETECTION.anchor_image_size,
    seed: int = DETECTION.seed,
    source_data_version: str | None = None,
    max_image_pixels: int = DETECTION.max_image_pixels,
) -> dict:
    """Read SRC in `fmt`, check every box, copy images as RGB PNG, compute anchors; returns the manifest.

    An image whose header claims more than `max_image_pixels` pixels is rejected before it is decoded.
    """
    src, out = Path(src), Path(out)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if anchor_image_size <= 0:
        raise ConfigError(f"anchor_image_size must be positive, got {anchor_image_size}")
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels <= 0:
        raise ConfigError(f"max_image_pixels must be a positive integer, got {max_image_pixels!r}")
    if not src.exists():
        raise DataError(src, "detection source not found")
    data = read_detection(src, fmt, val_fraction=val_fraction, seed=seed, max_image_pixels=max_image_pixels)
    if not data.images:
        raise DataError(src, f"no usable images found as a {fmt} dataset")
    _check_rejected(data, max_rejected_fraction, src)  # fail before copying anything
    with staged_output(out, source=src) as stage:
        written = _write_images(data, stage, max_image_pixels)
        records = written.records
        if not data.images:
            raise DataError(src, f"no usable images left after decoding: {data.rejected[-1].reason}")
        _check_rejected(data, max_rejected_fraction, src)
        anchors, stats = _anchors(data.images, anchor_image_size, seed, src)
        background = Counter(im.split for im in data.images if im.background)
        content_hash = _content_hash(records, written.md5, data.classes)
        manifest = {
            "kind": "detection",
            "producer": PRODUCER,  # staging replaces only folders whose manifest says this
            "format": fmt,
            "classes": data.classes,
            "counts": {
                split: {
                    "images": len(rows),
                    "boxes": sum(len(r["boxes"]) for r in rows),
                    "background": background[split],
                }
                for split, rows in records.items()
            },
            "rejected": [r.as_dict() for r in data.rejected],
            "duplicates": written.duplicates,
            "anchors": anchors,
            "anchor_image_size": anchor_image_size,
            "anchor_stats": stats,
            "source": str(src),
            "source_data_version": source_data_version,
            "content_hash": content_hash,
            # what lineage (Dagster, MLflow) keys on: the DVC version when known, else what was prepared
            "data_version": data_version(source_data_version, content_hash),
            "max_image_pixels": max_image_pixels,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        for split, rows in records.items():
            (stage / f"{split}.json").write_text(json.dumps(rows))
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _preview(stage, records["train"] or records["val"], data.classes)
    log.info("prepared %s: %s, %d rejected", out, manifest["counts"], len(data.rejected))
    return manifest


@dataclass
class _Written:
    records: dict[str, list[dict]]  # split -> rows of {split}.json
    md5: dict[str, str]  # prepared image relpath -> md5 of the source file's bytes
    duplicates: dict[str, int] = field(default_factory=lambda: {"within_split": 0, "across_splits": 0})


def _write_images(data: DetectionSource, stage: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> _Written:
    """Copy each image as RGB PNG into stage/images/<split>/; a bad or duplicate image becomes a rejection.

    Train comes first, so that of the same image in train and val/test the train copy is the one kept.
    """
    written = _Written(records={"train": [], "val": []}, md5={})  # both files always exist, maybe empty
    used: set[str] = set()
    first: dict[str, DetImage] = {}  # md5 -> the copy kept
    kept: list[DetImage] = []
    ordered = sorted(data.images, key=lambda im: SPLITS.index(im.split))  # stable: source order within a split
    for im in track(ordered, "copying detection images"):
        rgb = None
        with rejecting_errors(data.rejected, im.path):  # anything odd about this one file: a rejection
            raw = im.path.read_bytes()  # the one read: hashed here, decoded from memory below
            digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
            if digest in first:
                _reject_duplicate(data, written, im, first[digest])
                continue
            rgb = _decode_rgb(raw, max_pixels, im, data.rejected)
        if rgb is None:
            continue
        name = _unique_name(im, used)
        dest = stage / "images" / im.split / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        rgb.save(dest, format="PNG")  # outside the guard: a full disk is no reason to blame the image
        first[digest] = im  # only a copy that decoded: a second copy of a corrupt file is reported as corrupt
        kept.append(im)
        written.md5[f"images/{im.split}/{name}"] = digest
        written.records.setdefault(im.split, []).append(_record(im, name))
    data.images = kept
    return written


def _decode_rgb(raw: bytes, max_pixels: int, im: DetImage, rejected: list[Rejection]):
    """The image in `raw` as RGB (header checked before decoding), or None after recording why not."""
    try:
        with open_image(io.BytesIO(raw), max_pixels) as pil:
            return _to_rgb(pil)
    except BadImage as e:
        reason = str(e)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data past the header
        reason = f"unreadable image: {e}"
    rejected.append(Rejection(str(im.path), None, reason + dropped_with(len(im.boxes))))
    return None


def _reject_duplicate(data: DetectionSource, written: _Written, im: DetImage, kept: DetImage) -> None:
    """Reject a later copy of an image already kept (same bytes), naming the copy kept."""
    if kept.split == im.split:
        written.duplicates["within_split"] += 1
        why = "the same image twice in one split: the first copy is kept"
    else:
        written.duplicates["across_splits"] += 1
        why = (
            "held-out images must not be seen in training"
            if kept.split == "train"
            else "an image may be in only one held-out split"
        )
    data.rejected.append(
        Rejection(str(im.path), None, f"duplicate of {kept.path} ({kept.split}): {why}{dropped_with(len(im.boxes))}")
    )


def _record(im: DetImage, name: str) -> dict:
    return {
        "image": f"images/{im.split}/{name}",
        "width": im.width,
        "height": im.height,
        "boxes": [[round(v, 3) for v in b] for b in im.boxes],
        "labels": list(im.labels),
        "difficult": list(im.difficult) or [False] * len(im.boxes),
    }


def _content_hash(records: dict[str, list[dict]], md5: dict[str, str], classes: list[str]) -> str:
    """md5 over what was prepared: per image its split, name, source bytes' md5, boxes, labels and difficult
    flags, plus the class list. Any change of pixels, labels, split or classes changes it."""
    lines = [
        f"{split}\t{r['image']}\t{md5[r['image']]}\t{json.dumps([r['boxes'], r['labels'], r['difficult']])}"
        for split, rows in records.items()
        for r in rows
    ]
    return lineage_hash([*lines, "classes\t" + json.dumps(classes)])


def _unique_name(im: DetImage, used: set[str]) -> str:
    """`<stem>.png`, with a counter when two source images of a split share a stem."""
    stem, n = im.path.stem, 1
    name = f"{stem}.png"
    while f"{im.split}/{name}" in used:
        n += 1
        name = f"{stem}_{n}.png"
    used.add(f"{im.split}/{name}")
    return name


def _to_rgb(pil):
    """RGB from any PIL mode; 16-bit and float greyscale are rescaled rather than clipped."""
    if pil.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(pil, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        # transparent pixels become black, as most loaders see them
        return pil.convert("RGBA").convert("RGB")
    return pil.convert("RGB")


def _check_rejected(data: DetectionSource, max_fraction: float, src: Path) -> None:
    """Fail when more than `max_fraction` of the boxes, or of the images, were rejected."""
    box_rej = [r for r in data.rejected if r.line is not None]
    img_rej = [r for r in data.rejected if r.line is None]
    for what, rej, seen in (("boxes", box_rej, data.boxes_seen), ("images", img_rej, data.images_seen)):
        if seen and len(rej) / seen > max_fraction:
            worst = Counter(r.path for r in rej).most_common(10)
            files = ", ".join(f"{p} ({n})" for p, n in worst)
            raise DataError(
                src,
                f"{len(rej)} of {seen} {what} rejected ({len(rej) / seen:.0%} > "
                f"{max_fraction:.0%}); worst files: {files}; first: {rej[0].reason}",
            )


def _anchors(images: list[DetImage], size: int, seed: int, src: Path) -> tuple[dict, dict]:
    """YOLOv2 (5) and YOLOv3 (9) anchors from the train boxes, letterboxed to `size`."""
    train = [im for im in images if im.split == "train"] or images
    wh = [[b[2] - b[0], b[3] - b[1]] for im in train for b in im.boxes]
    image_wh = [[im.width, im.height] for im in train for _ in im.boxes]
    scaled = letterbox_wh(np.array(wh).reshape(-1, 2), np.array(image_wh).reshape(-1, 2), size)
    anchors, stats = {}, {}
    for name, k in ANCHOR_COUNTS.items():
        res = compute_anchors(scaled, k, seed=seed, source=str(src))
        anchors[name] = res.anchors
        stats[name] = {"avg_iou": round(res.avg_iou, 4), "bpr": round(res.bpr, 4)}
    return anchors, stats


def _preview(stage: Path, rows: list[dict], classes: list[str]) -> None:
    """Draw boxes and class names on the first few images and save a grid as preview.png."""
    import torch  # lazy: torch, only for the preview; prep steps stay torch-free
    from torchvision.utils import draw_bounding_boxes  # lazy: torch, only for the preview; prep steps stay torch-free

    images, captions = [], []
    for row in sorted(rows, key=lambda r: not r["boxes"])[:PREVIEW_IMAGES]:  # images with boxes first
        with Image.open(stage / row["image"]) as pil:
            t = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).contiguous()
        if row["boxes"]:
            t = draw_bounding_boxes(
                t,
                torch.tensor(row["boxes"], dtype=torch.float32),
                labels=[classes[i] for i in row["labels"]],
                colors="red",
                width=max(2, max(t.shape[1:]) // 64),
            )  # stays visible in a 128 px tile
        images.append(t)
        captions.append(f"{Path(row['image']).name}: {len(row['boxes'])} boxes")
    save_grid(images, captions, stage / "preview.png")
