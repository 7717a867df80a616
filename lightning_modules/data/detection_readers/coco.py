"""COCO reader: SRC/annotations/instances_{split}.json, bbox [x, y, w, h] -> xyxy."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from lightning_modules.data.detection_readers.common import (
    SPLITS,
    DetectionSource,
    DetImage,
    Rejection,
    as_int,
    check_box,
    dropped_with,
    probe_size,
    rejecting_errors,
    seeded_split,
)
from lightning_modules.data.detection_readers.paths import is_within, outside_root
from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS
from lightning_modules.errors import DataError
from lightning_modules.reporting.progress import track


def _load_coco(f: Path) -> dict:
    """One instances_{split}.json, checked for the shape the reader relies on."""
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f, f"cannot read: {e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f, f"not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "images" not in doc:
        raise DataError(f, "not a COCO instances file (no `images` list)")
    for key in ("images", "annotations", "categories"):
        if key in doc and not isinstance(doc[key], list):
            raise DataError(f, f"`{key}` must be a list, got {type(doc[key]).__name__}")
    return doc


def _coco_categories(docs: dict[str, dict], files: dict[str, Path]) -> dict[int, str]:
    """Category id -> name over all files; a category without a usable id, or one id with two names, is fatal."""
    cats: dict[int, tuple[str, str]] = {}  # id -> (name, where it was first defined)
    for split, doc in docs.items():
        f = files[split]
        for i, c in enumerate(doc.get("categories", [])):
            where = f"categories[{i}]"
            if not isinstance(c, dict):
                raise DataError(f, f"{where} is not an object: {c!r}")
            if "id" not in c:
                raise DataError(f, f"{where} has no `id`")
            cid = as_int(c["id"])
            if cid is None:
                raise DataError(f, f"{where}: `id` must be an integer, got {c['id']!r}")
            name = c.get("name", cid)
            if isinstance(name, bool) or not isinstance(name, (str, int)) or name == "":
                raise DataError(f, f"{where}: `name` must be a non-empty string, got {name!r}")
            name = str(name)
            if cid in cats and cats[cid][0] != name:
                raise DataError(f, f"{where}: id {cid} is named {name!r} here but {cats[cid][0]!r} in {cats[cid][1]}")
            cats.setdefault(cid, (name, f"{f.name} {where}"))
    return {cid: name for cid, (name, _) in cats.items()}


def _image_key(value) -> int | str | None:
    """A COCO image id as a dict key: ints (also 3.0 or "3"), or other strings; None when unusable."""
    number = as_int(value)
    if number is not None:
        return number
    return value if isinstance(value, str) and value else None


def _coco_image_path(src: Path, split: str, file_name: str) -> tuple[Path, str | None]:
    """Where `file_name` is, and why it may not be read (None when it may).

    Only places inside `src` are looked at, so `../` or an absolute file_name never reaches a file outside.
    """
    cands = [src / "images" / split / file_name, src / file_name, src / "images" / file_name]
    inside = [c for c in cands if is_within(os.path.abspath(c), os.path.abspath(src))]
    if not inside:
        return cands[0], f"leaves the dataset root {src}"
    path = next((c for c in inside if c.is_file()), inside[0])
    return path, outside_root(path, src)  # a symlink inside the root may still lead out


def _coco_image_entries(doc: dict, ann_file: Path, out: DetectionSource) -> list[tuple[int, object, dict]]:
    """(index, id key, entry) for each usable `images` entry; the others become image rejections."""
    entries = doc["images"]
    keys = [_image_key(im.get("id")) if isinstance(im, dict) else None for im in entries]
    uses = Counter(k for k in keys if k is not None)
    usable = []
    for i, (im, key) in enumerate(zip(entries, keys, strict=True)):
        if not isinstance(im, dict):
            why = f"is not an object: {str(im)[:100]!r}"
        elif key is None:
            why = f"has no usable `id` (got {im.get('id')!r})"
        elif uses[key] > 1:
            why = f"id {key!r} is used by {uses[key]} image entries: its annotations cannot be placed"
        elif not isinstance(im.get("file_name"), str) or not im["file_name"].strip():
            why = f"has no `file_name` (got {im.get('file_name')!r})"
        else:
            usable.append((i, key, im))
            continue
        out.images_seen += 1
        out.rejected.append(Rejection(str(ann_file), None, f"images[{i}] {why}"))
    return usable


def _coco_annotations(doc: dict, ann_file: Path, keys: set, out: DetectionSource) -> dict:
    """image id key -> [(line, annotation)]; non-objects and unknown image ids become box rejections.

    `line` is the annotation's integer id, else its index in `annotations`.
    """
    by_image: dict = {}
    for i, a in enumerate(doc.get("annotations", [])):
        if not isinstance(a, dict):
            out.boxes_seen += 1
            out.rejected.append(Rejection(str(ann_file), i, f"annotations[{i}] is not an object: {str(a)[:100]!r}"))
            continue
        line = as_int(a.get("id"))
        line = i if line is None else line
        key = _image_key(a.get("image_id"))
        if key not in keys:
            out.boxes_seen += 1
            out.rejected.append(Rejection(str(ann_file), line, f"unknown image_id {a.get('image_id')!r}"))
            continue
        by_image.setdefault(key, []).append((line, a))
    return by_image


def _read_coco_image(
    src: Path,
    split: str,
    ann_file: Path,
    index: int,
    im: dict,
    anns: list,
    cat_index: dict,
    max_pixels: int,
    out: DetectionSource,
) -> DetImage | None:
    """One `images` entry and its annotations, or None after recording why the image cannot be used."""
    file_name = im["file_name"].strip()
    path, why = _coco_image_path(src, split, file_name)
    if why:
        out.rejected.append(
            Rejection(
                str(ann_file),
                None,
                f"images[{index}]: file_name {file_name!r} {why}: not read{dropped_with(len(anns))}",
            )
        )
        return None
    size = probe_size(path, max_pixels, out)
    if size is None:
        return None
    w, h = size
    if (im.get("width"), im.get("height")) not in ((w, h), (None, None)):
        declared = f"{im.get('width')}x{im.get('height')}"
        out.rejected.append(
            Rejection(str(path), None, f"image is {w}x{h} but {ann_file.name} says {declared}{dropped_with(len(anns))}")
        )
        return None
    # Crowd annotations (`iscrowd: 1`) mark regions, not trainable boxes: skipped, as every COCO trainer does.
    anns = [(line, a) for line, a in anns if as_int(a.get("iscrowd") or 0) != 1]
    boxes, labels = [], []
    for line, a in anns:
        out.boxes_seen += 1
        box, why = _coco_box(a, cat_index, w, h)
        if box is None:
            out.rejected.append(Rejection(str(ann_file), line, f"{why} (image {path.name})"))
            continue
        boxes.append(box)
        labels.append(cat_index[as_int(a["category_id"])])
    return DetImage(path, w, h, boxes, labels, split, [False] * len(boxes), background=not anns)


def read_coco(
    src: Path, *, val_fraction: float = 0.2, seed: int = 0, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> DetectionSource:
    """Read SRC/annotations/instances_{split}.json; bbox [x,y,w,h] -> xyxy; category ids -> 0..K-1 in id order.

    Crowd annotations (`iscrowd: 1`) are skipped: they mark regions, not trainable boxes.
    """
    files = {s: src / "annotations" / f"instances_{s}.json" for s in SPLITS}
    files = {s: f for s, f in files.items() if f.is_file()}
    if "train" not in files:
        raise DataError(src / "annotations" / "instances_train.json", "COCO annotation file not found")
    docs = {split: _load_coco(f) for split, f in files.items()}
    cats = _coco_categories(docs, files)
    cat_index = {cid: i for i, cid in enumerate(sorted(cats))}
    out = DetectionSource(classes=[cats[c] for c in sorted(cats)], images=[], rejected=[])

    for split, doc in docs.items():
        ann_file = files[split]
        entries = _coco_image_entries(doc, ann_file, out)
        by_image = _coco_annotations(doc, ann_file, {key for _, key, _ in entries}, out)
        split_of = {key: split for _, key, _ in entries}
        if split == "train" and "val" not in docs:
            split_of = seeded_split(list(split_of), val_fraction, seed)
        for i, key, im in track(entries, f"reading COCO {split}"):
            out.images_seen += 1
            with rejecting_errors(out.rejected, ann_file, what=f"images[{i}]: "):
                det = _read_coco_image(
                    src, split_of[key], ann_file, i, im, by_image.get(key, []), cat_index, max_image_pixels, out
                )
                if det is not None:
                    out.images.append(det)
    return out


def _coco_box(a: dict, cat_index: dict, w: int, h: int) -> tuple[list[float] | None, str | None]:
    bbox = a.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None, f"malformed bbox {bbox!r}: expected [x, y, w, h]"
    if any(isinstance(v, bool) for v in bbox):
        return None, f"malformed bbox {bbox!r}: non-numeric value"
    try:
        x, y, bw, bh = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, f"malformed bbox {bbox!r}: non-numeric value"
    cid = as_int(a.get("category_id"))
    if cid is None:
        return None, f"malformed category_id {a.get('category_id')!r}"
    if cid not in cat_index:
        return None, f"category_id {cid} not in the file's categories"
    return check_box([x, y, x + bw, y + bh], w, h)
