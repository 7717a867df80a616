"""COCO json <-> per-image tensors (boxes xyxy pixels, contiguous labels 0..K-1).

Ground truth: instances json (images, annotations with bbox xywh/area/iscrowd, categories).
Detections: COCO results format, a list of {"image_id", "category_id", "bbox" [x,y,w,h], "score"}.
Labels follow the GT's categories sorted by id; `cat_ids[label]` gives the COCO id back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightning_modules.errors import DataError


@dataclass
class CocoGroundTruth:
    image_ids: list  # as in the json (COCO uses ints)
    file_names: list[str]
    class_names: list[str]
    cat_ids: list[int]
    items: list[dict] = field(default_factory=list)  # per image, in image_ids order

    @property
    def index(self) -> dict[int, int]:
        return {img: i for i, img in enumerate(self.image_ids)}


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON: {e}") from None


def _bbox(path, what: str, ann: dict) -> list[float]:
    b = ann.get("bbox")
    if (
        not isinstance(b, (list, tuple))
        or len(b) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
    ):
        raise DataError(path, f"{what}: bbox must be 4 finite numbers [x, y, w, h], got {b!r}")
    if b[2] < 0 or b[3] < 0:
        raise DataError(path, f"{what}: bbox has negative width or height: {b!r}")
    return [float(v) for v in b]


def load_coco_gt(path: str | Path) -> CocoGroundTruth:
    """Read a COCO instances json into per-image {"boxes","labels","area","iscrowd"} tensors."""
    path = Path(path)
    d = _read_json(path)
    if not isinstance(d, dict):
        raise DataError(path, "ground truth must be a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise DataError(path, f"missing or non-list '{key}'")
    try:
        cats = sorted(d["categories"], key=lambda c: c["id"])
        cat_ids = [int(c["id"]) for c in cats]
        names = [str(c.get("name", c["id"])) for c in cats]
        image_ids = [im["id"] for im in d["images"]]
        files = [str(im.get("file_name", "")) for im in d["images"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"an image or category lacks a valid 'id' ({e})") from None
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(path, "duplicate category ids")
    if not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in image_ids):
        raise DataError(path, "image ids must be integers or strings")
    if len(set(image_ids)) != len(image_ids):
        raise DataError(path, "duplicate image ids")
    label_of = {c: i for i, c in enumerate(cat_ids)}
    index = {img: i for i, img in enumerate(image_ids)}
    per = [{"boxes": [], "labels": [], "area": [], "iscrowd": []} for _ in image_ids]
    for n, a in enumerate(d["annotations"]):
        what = f"annotation {a.get('id', n) if isinstance(a, dict) else n}"
        if not isinstance(a, dict):
            raise DataError(path, f"{what} is not an object")
        if a.get("image_id") not in index:
            raise DataError(path, f"{what}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in label_of:
            raise DataError(path, f"{what}: category_id {a.get('category_id')!r} is not in 'categories'")
        x, y, w, h = _bbox(path, what, a)
        p = per[index[a["image_id"]]]
        p["boxes"].append([x, y, x + w, y + h])
        p["labels"].append(label_of[a["category_id"]])
        # COCOeval takes the area from the json (segment area for real COCO), not from the box.
        area = a.get("area", w * h)
        if not isinstance(area, (int, float)) or isinstance(area, bool):
            raise DataError(path, f"{what}: area must be a number, got {area!r}")
        p["area"].append(float(area))
        p["iscrowd"].append(int(bool(a.get("iscrowd", 0))))
    items = [
        {
            "boxes": torch.tensor(p["boxes"], dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor(p["labels"], dtype=torch.int64),
            "area": torch.tensor(p["area"], dtype=torch.float64),
            "iscrowd": torch.tensor(p["iscrowd"], dtype=torch.int64),
        }
        for p in per
    ]
    return CocoGroundTruth(image_ids, files, names, cat_ids, items)


def load_coco_results(path: str | Path, gt: CocoGroundTruth) -> list[dict]:
    """Read COCO results-format detections into per-image tensors aligned with `gt.image_ids`."""
    path = Path(path)
    d = _read_json(path)
    if isinstance(d, dict) and isinstance(d.get("annotations"), list):
        d = d["annotations"]
    if not isinstance(d, list):
        raise DataError(path, "detections must be a JSON list of {image_id, category_id, bbox, score}")
    index, label_of = gt.index, {c: i for i, c in enumerate(gt.cat_ids)}
    per = [{"boxes": [], "labels": [], "scores": []} for _ in gt.image_ids]
    for n, r in enumerate(d):
        what = f"detection {n}"
        if not isinstance(r, dict):
            raise DataError(path, f"{what} is not an object")
        if r.get("image_id") not in index:
            raise DataError(path, f"{what}: image_id {r.get('image_id')!r} is not in the ground truth")
        if r.get("category_id") not in label_of:
            raise DataError(path, f"{what}: category_id {r.get('category_id')!r} is not a ground-truth category")
        s = r.get("score")
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
            raise DataError(path, f"{what}: score must be a finite number, got {s!r}")
        x, y, w, h = _bbox(path, what, r)
        p = per[index[r["image_id"]]]
        p["boxes"].append([x, y, x + w, y + h])
        p["labels"].append(label_of[r["category_id"]])
        p["scores"].append(float(s))
    return [
        {
            "boxes": torch.tensor(p["boxes"], dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor(p["labels"], dtype=torch.int64),
            "scores": torch.tensor(p["scores"], dtype=torch.float64),
        }
        for p in per
    ]


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def write_coco_gt(
    path: str | Path, gts: list[dict], class_names, *, image_ids=None, file_names=None, sizes=None, cat_ids=None
) -> Path:
    """Write per-image GT (xyxy, labels 0..K-1, optional area/iscrowd) as a COCO instances json."""
    image_ids = list(image_ids) if image_ids is not None else list(range(1, len(gts) + 1))
    cat_ids = list(cat_ids) if cat_ids is not None else list(range(1, len(class_names) + 1))
    images, anns = [], []
    for i, (img, g) in enumerate(zip(image_ids, gts)):
        im = {"id": img, "file_name": file_names[i] if file_names else f"{img}.jpg"}
        if sizes:
            im["width"], im["height"] = int(sizes[i][0]), int(sizes[i][1])
        images.append(im)
        for k, (box, lab) in enumerate(zip(g["boxes"].tolist(), g["labels"].tolist())):
            b = _xywh(box)
            area = float(g["area"][k]) if g.get("area") is not None else b[2] * b[3]
            crowd = int(g["iscrowd"][k]) if g.get("iscrowd") is not None else 0
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img,
                    "category_id": cat_ids[int(lab)],
                    "bbox": b,
                    "area": area,
                    "iscrowd": crowd,
                }
            )
    cats = [{"id": c, "name": str(n)} for c, n in zip(cat_ids, class_names)]
    path = Path(path)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def write_coco_results(path: str | Path, preds: list[dict], *, image_ids=None, cat_ids=None) -> Path:
    """Write per-image predictions (xyxy, labels 0..K-1, scores) in COCO results format."""
    image_ids = list(image_ids) if image_ids is not None else list(range(1, len(preds) + 1))
    out = []
    for img, p in zip(image_ids, preds):
        for box, lab, s in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist()):
            out.append(
                {
                    "image_id": img,
                    "category_id": cat_ids[int(lab)] if cat_ids else int(lab) + 1,
                    "bbox": _xywh(box),
                    "score": float(s),
                }
            )
    path = Path(path)
    path.write_text(json.dumps(out))
    return path
