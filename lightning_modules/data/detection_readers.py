"""Detection readers: YOLO txt + data.yaml, COCO json and Pascal VOC xml -> one internal form.

Every reader returns a `DetectionSource`: class names, one `DetImage` per image (boxes xyxy in
pixels of the image as stored on disk), and a `Rejection` for every box or image it could not use.
A bad box is dropped and its image kept; a missing or unreadable image is dropped.
"""

from __future__ import annotations

import json
import math
import os
import random
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lightning_modules.errors import ConfigError, DataError
from lightning_modules.progress import track

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
    """A dropped box (line = file line / COCO annotation id / VOC object number) or image (line None)."""

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


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; raises OSError when missing or unreadable."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def seeded_split(keys: list, val_fraction: float, seed: int) -> dict:
    """Map each key to "train"/"val": a seeded shuffle of the sorted keys, val gets round(n * fraction)."""
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if 0 < val_fraction and n_val == 0 and len(order) > 1:
        n_val = 1  # a tiny set still gets a val image
    return {k: ("val" if i < n_val else "train") for i, k in enumerate(order)}


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# ---------------------------------------------------------------- YOLO


def yolo_label_path(image: Path) -> Path:
    """YOLO convention: last `/images/` -> `/labels/`, suffix -> `.txt`."""
    s = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


def _yolo_names(cfg: dict, yaml_path: Path) -> list[str]:
    names = cfg.get("names")
    nc = cfg.get("nc")
    if isinstance(names, dict):
        try:
            keyed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(yaml_path, f"`names` keys must be class ids, got {list(names)}") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise DataError(yaml_path, f"`names` ids must be 0..{len(keyed) - 1}, got {sorted(keyed)}")
        names = [keyed[i] for i in range(len(keyed))]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    elif names is None and isinstance(nc, int):
        names = [str(i) for i in range(nc)]
    else:
        raise DataError(yaml_path, "needs `names` (a list or a dict id -> name) or `nc`")
    if nc is not None and int(nc) != len(names):
        raise DataError(yaml_path, f"`nc` is {nc} but `names` has {len(names)} entries")
    return names


def _yolo_split_images(entry, root: Path, yaml_path: Path, split: str) -> list[Path]:
    """A split entry is a folder, a .txt list of images, or a list of those."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images += _list_images(p)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else (p.parent / q))
        else:
            raise DataError(p, f"image folder for split {split!r} (from {yaml_path}) not found")
    return images


def _read_yolo_labels(label: Path, w: int, h: int, nc: int, rej: list[Rejection]) -> tuple[list, list, int]:
    boxes, labels, seen = [], [], 0
    for n, raw in enumerate(label.read_text(errors="replace").splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        seen += 1

        def reject(reason: str) -> None:
            rej.append(Rejection(str(label), n, reason))

        if len(tokens) != 5:
            reject(f"malformed line: expected 5 values `class cx cy w h`, got {len(tokens)}")
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            reject(f"malformed line: non-numeric value in {raw.strip()!r}")
            continue
        if not all(math.isfinite(v) for v in values):
            reject(f"malformed line: non-finite value in {raw.strip()!r}")
            continue
        cls, cx, cy, bw, bh = values
        if cls != int(cls) or not 0 <= cls < nc:
            reject(f"class id {tokens[0]} out of range 0..{nc - 1}")
            continue
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        kept, why = check_box(box, w, h)
        if kept is None:
            reject(why)
            continue
        boxes.append(kept)
        labels.append(int(cls))
    return boxes, labels, seen


def read_yolo(src: Path, *, val_fraction: float = 0.2, seed: int = 0) -> DetectionSource:
    """Read a YOLO dataset from SRC/data.yaml (`path`, `train`, `val`[, `test`], `nc`, `names`)."""
    import yaml

    yaml_path = src / "data.yaml" if src.is_dir() else src
    if not yaml_path.is_file():
        raise DataError(yaml_path, "data.yaml not found (a YOLO dataset needs it)")
    try:
        cfg = yaml.safe_load(yaml_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(yaml_path, f"not valid YAML: {e}") from None
    if not isinstance(cfg, dict) or "train" not in cfg:
        raise DataError(yaml_path, "needs a `train` entry")
    names = _yolo_names(cfg, yaml_path)
    root = Path(str(cfg.get("path") or "."))
    root = root if root.is_absolute() else yaml_path.parent / root
    if not root.is_dir():  # a dataset moved since data.yaml was written (DVC checkout elsewhere)
        root = yaml_path.parent

    per_split = {s: _yolo_split_images(cfg[s], root, yaml_path, s) for s in SPLITS if cfg.get(s)}
    if "val" not in per_split:
        assign = seeded_split(per_split["train"], val_fraction, seed)
        per_split = {**per_split, "train": [p for p in assign if assign[p] == "train"],
                     "val": [p for p in assign if assign[p] == "val"]}

    out = DetectionSource(classes=names, images=[], rejected=[])
    todo = [(split, p) for split, paths in per_split.items() for p in paths]
    for split, path in track(todo, "reading YOLO labels"):
        out.images_seen += 1
        try:
            w, h = image_size(path)
        except OSError as e:
            out.rejected.append(Rejection(str(path), None, f"missing or unreadable image: {e}"))
            continue
        label = yolo_label_path(path)
        boxes, labels, seen = [], [], 0
        if label.is_file():
            boxes, labels, seen = _read_yolo_labels(label, w, h, len(names), out.rejected)
        out.boxes_seen += seen
        out.images.append(DetImage(path, w, h, boxes, labels, split, [False] * len(boxes), background=seen == 0))
    return out


# ---------------------------------------------------------------- COCO


def _coco_image_path(src: Path, split: str, file_name: str) -> Path:
    for cand in (src / "images" / split / file_name, src / file_name, src / "images" / file_name):
        if cand.is_file():
            return cand
    return src / "images" / split / file_name


def read_coco(src: Path, *, val_fraction: float = 0.2, seed: int = 0) -> DetectionSource:
    """Read SRC/annotations/instances_{split}.json; bbox [x,y,w,h] -> xyxy; category ids -> 0..K-1 in id order.

    Crowd annotations (`iscrowd: 1`) are skipped: they mark regions, not trainable boxes.
    """
    files = {s: src / "annotations" / f"instances_{s}.json" for s in SPLITS}
    files = {s: f for s, f in files.items() if f.is_file()}
    if "train" not in files:
        raise DataError(src / "annotations" / "instances_train.json", "COCO annotation file not found")
    docs = {}
    for split, f in files.items():
        try:
            docs[split] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f, f"not valid JSON: {e}") from None
        if not isinstance(docs[split], dict) or "images" not in docs[split]:
            raise DataError(f, "not a COCO instances file (no `images` list)")
    cats: dict[int, str] = {}
    for split, doc in docs.items():
        for c in doc.get("categories", []):
            cats.setdefault(int(c["id"]), str(c.get("name", c["id"])))
    cat_index = {cid: i for i, cid in enumerate(sorted(cats))}
    out = DetectionSource(classes=[cats[c] for c in sorted(cats)], images=[], rejected=[])

    for split, doc in docs.items():
        ann_file = files[split]
        by_image: dict = {}
        for a in doc.get("annotations", []):
            by_image.setdefault(a.get("image_id"), []).append(a)
        image_ids = {im.get("id") for im in doc["images"]}
        for iid, anns in by_image.items():
            if iid not in image_ids:
                for a in anns:
                    out.boxes_seen += 1
                    out.rejected.append(Rejection(str(ann_file), a.get("id"), f"unknown image_id {iid}"))
        split_of = {im.get("id"): split for im in doc["images"]}
        if split == "train" and "val" not in docs:
            split_of = seeded_split(list(image_ids), val_fraction, seed)
        for im in track(doc["images"], f"reading COCO {split}"):
            out.images_seen += 1
            path = _coco_image_path(src, split, str(im.get("file_name", "")))
            try:
                w, h = image_size(path)
            except OSError as e:
                out.rejected.append(Rejection(str(path), None, f"missing or unreadable image: {e}"))
                continue
            if (im.get("width"), im.get("height")) not in ((w, h), (None, None)):
                out.rejected.append(Rejection(str(path), None, f"image is {w}x{h} but {ann_file.name} says "
                                              f"{im.get('width')}x{im.get('height')}"))
                continue
            boxes, labels = [], []
            anns = [a for a in by_image.get(im.get("id"), []) if not a.get("iscrowd")]
            for a in anns:
                out.boxes_seen += 1
                box, why = _coco_box(a, cat_index, w, h)
                if box is None:
                    out.rejected.append(Rejection(str(ann_file), a.get("id"), f"{why} (image {path.name})"))
                    continue
                boxes.append(box)
                labels.append(cat_index[int(a["category_id"])])
            out.images.append(DetImage(path, w, h, boxes, labels, split_of[im.get("id")],
                                       [False] * len(boxes), background=not anns))
    return out


def _coco_box(a: dict, cat_index: dict, w: int, h: int) -> tuple[list[float] | None, str | None]:
    bbox = a.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None, f"malformed bbox {bbox!r}: expected [x, y, w, h]"
    try:
        x, y, bw, bh = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, f"malformed bbox {bbox!r}: non-numeric value"
    try:
        cid = int(a.get("category_id"))
    except (TypeError, ValueError):
        return None, f"malformed category_id {a.get('category_id')!r}"
    if cid not in cat_index:
        return None, f"category_id {cid} not in the file's categories"
    return check_box([x, y, x + bw, y + bh], w, h)


# ---------------------------------------------------------------- Pascal VOC


def read_voc(src: Path, *, val_fraction: float = 0.2, seed: int = 0) -> DetectionSource:
    """Read VOCdevkit-style SRC (Annotations/*.xml, JPEGImages/, ImageSets/Main/{train,val}.txt).

    Coordinates are taken as written (no 1-based shift); classes are the sorted names found;
    `difficult` objects are kept and flagged. A rejected object's `line` is its number in the file (from 1).
    """
    ann_dir = src / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(ann_dir, "VOC Annotations folder not found")
    sets = src / "ImageSets" / "Main"
    out = DetectionSource(classes=[], images=[], rejected=[])
    if (sets / "train.txt").is_file():
        split_of = {}
        for split in SPLITS:
            f = sets / f"{split}.txt"
            if f.is_file():
                for line in f.read_text().split():
                    split_of.setdefault(line.strip(), split)
    else:
        split_of = seeded_split([p.stem for p in ann_dir.glob("*.xml")], val_fraction, seed)

    parsed = []
    for stem in track(sorted(split_of), "reading VOC annotations"):
        xml = ann_dir / f"{stem}.xml"
        out.images_seen += 1
        try:
            root = ET.parse(xml).getroot()
        except (OSError, ET.ParseError) as e:
            out.rejected.append(Rejection(str(xml), None, f"missing or unreadable annotation: {e}"))
            continue
        path = src / "JPEGImages" / (root.findtext("filename") or f"{stem}.jpg").strip()
        try:
            w, h = image_size(path)
        except OSError as e:
            out.rejected.append(Rejection(str(path), None, f"missing or unreadable image: {e}"))
            continue
        size = (_int(root.findtext("size/width")), _int(root.findtext("size/height")))
        if size[0] and size[1] and size != (w, h):
            out.rejected.append(Rejection(str(path), None, f"image is {w}x{h} but {xml.name} says {size[0]}x{size[1]}"))
            continue
        parsed.append((xml, path, w, h, split_of[stem], root.findall("object")))

    out.classes = sorted({(o.findtext("name") or "").strip() for *_, objs in parsed for o in objs} - {""})
    index = {c: i for i, c in enumerate(out.classes)}
    for xml, path, w, h, split, objs in parsed:
        boxes, labels, difficult = [], [], []
        for n, o in enumerate(objs, start=1):
            out.boxes_seen += 1
            box, why = _voc_box(o, w, h)
            if box is None:
                out.rejected.append(Rejection(str(xml), n, why))
                continue
            boxes.append(box)
            labels.append(index[o.findtext("name").strip()])
            difficult.append(_int(o.findtext("difficult")) == 1)
        out.images.append(DetImage(path, w, h, boxes, labels, split, difficult, background=not objs))
    return out


def _int(text: str | None) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def _voc_box(o: ET.Element, w: int, h: int) -> tuple[list[float] | None, str | None]:
    if not (o.findtext("name") or "").strip():
        return None, "malformed object: no <name>"
    try:
        box = [float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
    except (TypeError, ValueError):
        return None, "malformed object: <bndbox> needs numeric xmin, ymin, xmax, ymax"
    return check_box(box, w, h)


READERS: dict[str, Callable[..., DetectionSource]] = {"yolo": read_yolo, "coco": read_coco, "voc": read_voc}


def read_detection(src: Path, fmt: str, *, val_fraction: float = 0.2, seed: int = 0) -> DetectionSource:
    """Read SRC in format `fmt` (one of READERS)."""
    if fmt not in READERS:
        raise ConfigError(f"fmt: unknown detection format {fmt!r}; choose one of {sorted(READERS)}")
    return READERS[fmt](Path(src), val_fraction=val_fraction, seed=seed)
