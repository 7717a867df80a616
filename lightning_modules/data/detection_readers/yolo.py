"""YOLO reader: data.yaml (`path`, `train`, `val`[, `test`], `nc`, `names`) + one .txt label file per image."""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from lightning_modules.data.detection_readers.common import (
    SPLITS,
    DetectionSource,
    DetImage,
    Rejection,
    as_int,
    check_box,
    probe_size,
    read_text,
    rejecting_errors,
    seeded_split,
)
from lightning_modules.data.detection_readers.paths import list_images, outside_root
from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS
from lightning_modules.errors import DataError
from lightning_modules.reporting.progress import track


def yolo_label_path(image: Path) -> Path:
    """YOLO convention: last `/images/` -> `/labels/`, suffix -> `.txt`."""
    s = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


def _load_yolo_yaml(yaml_path: Path) -> dict:
    if not yaml_path.is_file():
        raise DataError(yaml_path, "data.yaml not found (a YOLO dataset needs it)")
    text = read_text(yaml_path, "data.yaml")
    try:
        cfg = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise DataError(yaml_path, f"not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise DataError(yaml_path, f"must be a mapping (`train`, `val`, `names`, ...), got {type(cfg).__name__}")
    return cfg


def _class_name(value, key: str, yaml_path: Path) -> str:
    """One `names` entry as a class name: a string or a number; anything else is a mistake in data.yaml."""
    if isinstance(value, bool):  # YAML reads an unquoted yes/no/on/off as a boolean
        raise DataError(yaml_path, f"`{key}` is the boolean {value}: quote it (e.g. 'yes') if it is a class name")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise DataError(yaml_path, f"`{key}` must be a non-empty string (a class name), got {value!r}")


def _yolo_names(cfg: dict, yaml_path: Path) -> list[str]:
    names, nc = cfg.get("names"), cfg.get("nc")
    if nc is not None:
        if as_int(nc) is None or as_int(nc) < 0:
            raise DataError(yaml_path, f"`nc` must be a non-negative integer (the number of classes), got {nc!r}")
        nc = as_int(nc)
    if isinstance(names, dict):
        keyed = {}
        for k, v in names.items():
            if as_int(k) is None:
                raise DataError(yaml_path, f"`names` keys must be class ids, got {k!r}")
            keyed[as_int(k)] = _class_name(v, f"names[{k!r}]", yaml_path)
        if sorted(keyed) != list(range(len(keyed))):
            raise DataError(yaml_path, f"`names` ids must be 0..{len(keyed) - 1}, got {sorted(keyed)}")
        names = [keyed[i] for i in range(len(keyed))]
    elif isinstance(names, list):
        names = [_class_name(v, f"names[{i}]", yaml_path) for i, v in enumerate(names)]
    elif names is None and nc is not None:
        names = [str(i) for i in range(nc)]
    elif names is None:
        raise DataError(yaml_path, "needs `names` (a list or a dict id -> name) or `nc`")
    else:
        raise DataError(yaml_path, f"`names` must be a list or a dict id -> name, got {type(names).__name__} {names!r}")
    if nc is not None and nc != len(names):
        raise DataError(yaml_path, f"`nc` is {nc} but `names` has {len(names)} entries")
    if not names:
        raise DataError(yaml_path, "no classes: `names` is empty")
    return names


def _yolo_root(cfg: dict, yaml_path: Path) -> Path:
    """The dataset root: data.yaml's `path` (relative to data.yaml's folder), else data.yaml's folder.

    `path` is the user's explicit statement of where the dataset lives, even when it is outside data.yaml's
    folder (Ultralytics writes `path: ../datasets/coco8`): it becomes the root every image must stay inside.
    """
    path = cfg.get("path")
    if path is not None and not isinstance(path, str):
        raise DataError(yaml_path, f"`path` must be a string (the dataset folder), got {type(path).__name__} {path!r}")
    root = Path(path or ".")
    root = root if root.is_absolute() else yaml_path.parent / root
    if not root.is_dir():  # a dataset moved since data.yaml was written (DVC checkout elsewhere)
        root = yaml_path.parent
    return root


def _yolo_split_entries(cfg: dict, yaml_path: Path) -> dict[str, list[str]]:
    """split -> its entries (folders or .txt lists); a split that is absent, null or empty is left out."""
    out = {}
    for split in SPLITS:
        entry = cfg.get(split)
        if entry in (None, "", []):
            continue
        entries = entry if isinstance(entry, list) else [entry]
        if not all(isinstance(e, str) and e.strip() and "\0" not in e for e in entries):
            raise DataError(
                yaml_path,
                f"`{split}` must be a folder, a .txt list of images or a list of those (strings), got {entry!r}",
            )
        out[split] = entries
    if "train" not in out:
        raise DataError(yaml_path, "needs a `train` entry")
    return out


def _yolo_split_images(
    entries: list[str], root: Path, yaml_path: Path, split: str
) -> tuple[list[Path], list[Rejection]]:
    """A split entry is a folder, a .txt list of images, or a list of those.

    An entry itself leading out of the root is a mistake in data.yaml (DataError); an image in a .txt list
    or a symlink leading out is rejected one by one later, when the image is read.
    """
    images: list[Path] = []
    problems: list[Rejection] = []
    for e in entries:
        p = Path(e)
        p = p if p.is_absolute() else root / p
        why = outside_root(p, root)
        if why:
            raise DataError(yaml_path, f"`{split}` entry {e!r} {why} (set `path` to a folder that contains it)")
        if p.is_dir():
            found, bad = list_images(p, root)
            images += found
            problems += bad
        elif p.is_file() and p.suffix == ".txt":
            for line in read_text(p, "image list").splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else (p.parent / q))
        else:
            raise DataError(p, f"image folder or .txt list for split {split!r} (from {yaml_path}) not found")
    return images, problems


def _read_label_text(label: Path) -> str:
    """A YOLO label file as text; raises _BadLabel (the whole image goes) when it is not readable text."""
    try:
        return label.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadLabel(f"label file is not UTF-8 text (binary or another encoding): {e}") from None
    except OSError as e:
        raise _BadLabel(f"unreadable label file: {e}") from None


class _BadLabel(Exception):
    """A label file that cannot be read as text: its image is dropped, since its boxes are unknown."""


def _read_yolo_labels(label: Path, w: int, h: int, nc: int, rej: list[Rejection]) -> tuple[list, list, int]:
    boxes, labels, seen = [], [], 0
    # split("\n") rather than splitlines(): line numbers stay those an editor shows, even with stray \f or \x1c
    for n, raw in enumerate(_read_label_text(label).split("\n"), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        seen += 1

        def reject(reason: str, line: int = n) -> None:
            rej.append(Rejection(str(label), line, reason))

        if len(tokens) != 5:
            reject(f"malformed line: expected 5 values `class cx cy w h`, got {len(tokens)}")
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            reject(f"malformed line: non-numeric value in {raw.strip()[:200]!r}")
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


def _read_yolo_image(
    path: Path, split: str, root: Path, nc: int, max_pixels: int, out: DetectionSource
) -> DetImage | None:
    """One image and its label file, or None after recording why the image cannot be used."""
    why = outside_root(path, root)
    if why:
        out.rejected.append(Rejection(str(path), None, f"image {why}: not read"))
        return None
    size = probe_size(path, max_pixels, out)
    if size is None:
        return None
    w, h = size
    label = yolo_label_path(path)
    why = outside_root(label, root)
    if why:
        out.rejected.append(Rejection(str(label), None, f"label file {why}: not read, its image is dropped"))
        return None
    boxes, labels, seen = [], [], 0
    if label.is_file():
        try:
            boxes, labels, seen = _read_yolo_labels(label, w, h, nc, out.rejected)
        except _BadLabel as e:
            out.rejected.append(Rejection(str(label), None, f"{e}; its image is dropped"))
            return None
    out.boxes_seen += seen
    return DetImage(path, w, h, boxes, labels, split, [False] * len(boxes), background=seen == 0)


def read_yolo(
    src: Path, *, val_fraction: float = 0.2, seed: int = 0, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> DetectionSource:
    """Read a YOLO dataset from SRC/data.yaml (`path`, `train`, `val`[, `test`], `nc`, `names`)."""
    yaml_path = src / "data.yaml" if src.is_dir() else src
    cfg = _load_yolo_yaml(yaml_path)
    names = _yolo_names(cfg, yaml_path)
    root = _yolo_root(cfg, yaml_path)
    out = DetectionSource(classes=names, images=[], rejected=[])

    per_split = {}
    for split, entries in _yolo_split_entries(cfg, yaml_path).items():
        per_split[split], problems = _yolo_split_images(entries, root, yaml_path, split)
        out.rejected += problems
        out.images_seen += len(problems)
    if "val" not in per_split:
        assign = seeded_split(per_split["train"], val_fraction, seed)
        per_split = {
            **per_split,
            "train": [p for p in assign if assign[p] == "train"],
            "val": [p for p in assign if assign[p] == "val"],
        }

    todo = [(split, p) for split, paths in per_split.items() for p in paths]
    for split, path in track(todo, "reading YOLO labels"):
        out.images_seen += 1
        with rejecting_errors(out.rejected, path):
            im = _read_yolo_image(path, split, root, len(names), max_image_pixels, out)
            if im is not None:
                out.images.append(im)
    return out
