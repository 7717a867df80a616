"""Pascal VOC reader: VOCdevkit-style Annotations/*.xml, JPEGImages/, ImageSets/Main/{train,val,test}.txt."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from lightning_modules.data.detection_readers.common import (
    SPLITS,
    DetectionSource,
    DetImage,
    Rejection,
    check_box,
    dropped_with,
    probe_size,
    read_text,
    rejecting_errors,
    seeded_split,
)
from lightning_modules.data.detection_readers.paths import outside_root
from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS
from lightning_modules.errors import DataError
from lightning_modules.reporting.progress import track


def _voc_splits(src: Path, ann_dir: Path, val_fraction: float, seed: int) -> dict[str, str]:
    """stem -> split from ImageSets/Main/{train,val,test}.txt (first token of each line), else a seeded split."""
    sets = src / "ImageSets" / "Main"
    if not (sets / "train.txt").is_file():
        return seeded_split([p.stem for p in ann_dir.glob("*.xml")], val_fraction, seed)
    split_of: dict[str, str] = {}
    for split in SPLITS:
        f = sets / f"{split}.txt"
        if f.is_file():
            for line in read_text(f, "split file").splitlines():
                if line.split():
                    split_of.setdefault(line.split()[0], split)
    return split_of


def _read_voc_file(src: Path, xml: Path, stem: str, split: str, max_pixels: int, out: DetectionSource) -> tuple | None:
    """Parse one annotation file and probe its image: (xml, image, w, h, split, objects), or None once rejected."""

    def reject(path: Path, reason: str) -> None:
        out.rejected.append(Rejection(str(path), None, reason))

    why = outside_root(xml, src)
    if why:
        return reject(xml, f"annotation {why}: not read")
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as e:
        return reject(xml, f"missing or unreadable annotation: {e}")
    if root.tag != "annotation":
        return reject(xml, f"root element is <{root.tag}>, not <annotation>: not a VOC annotation")
    objs = root.findall("object")
    nested = len(root.findall(".//object")) - len(objs)
    if nested:  # reading only the direct children would silently lose these boxes
        return reject(xml, f"{nested} <object> element(s) not directly under <annotation>: odd structure")
    file_name = (root.findtext("filename") or f"{stem}.jpg").strip()
    path = src / "JPEGImages" / file_name
    why = outside_root(path, src)
    if why:
        return reject(xml, f"<filename> {file_name!r} {why}: not read{dropped_with(len(objs))}")
    size = probe_size(path, max_pixels, out)
    if size is None:
        return None
    w, h = size
    declared = (_int(root.findtext("size/width")), _int(root.findtext("size/height")))
    if declared[0] and declared[1] and declared != (w, h):
        return reject(
            path, f"image is {w}x{h} but {xml.name} says {declared[0]}x{declared[1]}{dropped_with(len(objs))}"
        )
    return xml, path, w, h, split, objs


def _voc_image(
    xml: Path, path: Path, w: int, h: int, split: str, objs: list, index: dict, out: DetectionSource
) -> DetImage:
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
    return DetImage(path, w, h, boxes, labels, split, difficult, background=not objs)


def read_voc(
    src: Path, *, val_fraction: float = 0.2, seed: int = 0, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> DetectionSource:
    """Read VOCdevkit-style SRC (Annotations/*.xml, JPEGImages/, ImageSets/Main/{train,val}.txt).

    Coordinates are taken as written (no 1-based shift); classes are the sorted names found;
    `difficult` objects are kept and flagged. A rejected object's `line` is its number in the file (from 1).
    """
    ann_dir = src / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(ann_dir, "VOC Annotations folder not found")
    split_of = _voc_splits(src, ann_dir, val_fraction, seed)
    out = DetectionSource(classes=[], images=[], rejected=[])

    parsed = []
    for stem in track(sorted(split_of), "reading VOC annotations"):
        xml = ann_dir / f"{stem}.xml"
        out.images_seen += 1
        with rejecting_errors(out.rejected, xml):
            item = _read_voc_file(src, xml, stem, split_of[stem], max_image_pixels, out)
            if item is not None:
                parsed.append(item)

    out.classes = sorted({(o.findtext("name") or "").strip() for *_, objs in parsed for o in objs} - {""})
    index = {c: i for i, c in enumerate(out.classes)}
    for item in parsed:
        with rejecting_errors(out.rejected, item[0]):
            out.images.append(_voc_image(*item, index, out))
    return out


def _int(text: str | None) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError, OverflowError):
        return None


def _voc_box(o: ET.Element, w: int, h: int) -> tuple[list[float] | None, str | None]:
    if not (o.findtext("name") or "").strip():
        return None, "malformed object: no <name>"
    try:
        box = [float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
    except (TypeError, ValueError):
        return None, "malformed object: <bndbox> needs numeric xmin, ymin, xmax, ymax"
    return check_box(box, w, h)
