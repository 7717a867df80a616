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

import json
import logging
import math
import os
import random
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS, BadImage, open_image
from lightning_modules.errors import ConfigError, DataError, VisionflowError
from lightning_modules.progress import track

log = logging.getLogger("visionflow")

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


def _probe(path: Path, max_pixels: int, out: DetectionSource) -> tuple[int, int] | None:
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
def rejecting_errors(rejected: list[Rejection], path: str | Path, line: int | None = None,
                     what: str = "") -> Iterator[None]:
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


# ---------------------------------------------------------------- staying inside the dataset


def _within(path: str, root: str) -> bool:
    return Path(path).is_relative_to(root)


def outside_root(path: Path, root: Path) -> str | None:
    """Why `path` must not be read as part of the dataset at `root`, or None when it may.

    Checked twice: on the path as written (`../`, absolute paths), then on its real path, so that a
    symlink inside the dataset cannot point the prep at files elsewhere on the machine.
    """
    if not _within(os.path.abspath(path), os.path.abspath(root)):
        return f"leaves the dataset root {root}"
    real = os.path.realpath(path)
    if not _within(real, os.path.realpath(root)):
        return f"is a symlink to {real}, outside the dataset root {root}"
    return None


def _list_images(folder: Path, root: Path) -> tuple[list[Path], list[Rejection]]:
    """Image files under `folder`, following symlinked folders only while they stay inside `root`.

    A symlinked folder leading out of the root is reported and not read; one leading to a folder already
    listed (a loop such as `sub/up -> ..`, or a second link to the same folder) is skipped with a warning.
    Symlinked files are listed as they are: the per-image root check rejects those that lead out.
    """
    found: list[Path] = []
    problems: list[Rejection] = []
    root_real = os.path.realpath(root)
    listed = {os.path.realpath(folder)}

    def unreadable(e: OSError) -> None:  # os.walk would otherwise skip an unreadable folder without a word
        problems.append(Rejection(str(e.filename), None, f"folder not readable, its images not listed: {e}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath) / d
            real = os.path.realpath(full)
            if not _within(real, root_real):
                problems.append(Rejection(str(full), None, f"symlinked folder to {real}, outside the dataset "
                                                           f"root {root}: not read"))
            elif real in listed:
                log.warning("skipping %s: it leads to %s, already listed (a symlink loop or a second link)",
                            full, real)
            else:
                listed.add(real)
                keep.append(d)
        dirnames[:] = keep  # os.walk descends only into what is left here
        found += [Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found), problems


def _as_int(value) -> int | None:
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


def _read_text(path: Path, what: str) -> str:
    """A whole-dataset text file (data.yaml, an image list, a split file) as UTF-8, or DataError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"{what} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise DataError(path, f"cannot read the {what}: {e}") from None


# ---------------------------------------------------------------- YOLO


def yolo_label_path(image: Path) -> Path:
    """YOLO convention: last `/images/` -> `/labels/`, suffix -> `.txt`."""
    s = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


def _load_yolo_yaml(yaml_path: Path) -> dict:
    import yaml

    if not yaml_path.is_file():
        raise DataError(yaml_path, "data.yaml not found (a YOLO dataset needs it)")
    text = _read_text(yaml_path, "data.yaml")
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
        if _as_int(nc) is None or _as_int(nc) < 0:
            raise DataError(yaml_path, f"`nc` must be a non-negative integer (the number of classes), got {nc!r}")
        nc = _as_int(nc)
    if isinstance(names, dict):
        keyed = {}
        for k, v in names.items():
            if _as_int(k) is None:
                raise DataError(yaml_path, f"`names` keys must be class ids, got {k!r}")
            keyed[_as_int(k)] = _class_name(v, f"names[{k!r}]", yaml_path)
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
        raise DataError(yaml_path, f"`names` must be a list or a dict id -> name, got {type(names).__name__} "
                                   f"{names!r}")
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
            raise DataError(yaml_path, f"`{split}` must be a folder, a .txt list of images or a list of those "
                                       f"(strings), got {entry!r}")
        out[split] = entries
    if "train" not in out:
        raise DataError(yaml_path, "needs a `train` entry")
    return out


def _yolo_split_images(entries: list[str], root: Path, yaml_path: Path, split: str
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
            found, bad = _list_images(p, root)
            images += found
            problems += bad
        elif p.is_file() and p.suffix == ".txt":
            for line in _read_text(p, "image list").splitlines():
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

        def reject(reason: str) -> None:
            rej.append(Rejection(str(label), n, reason))

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


def _read_yolo_image(path: Path, split: str, root: Path, nc: int, max_pixels: int,
                     out: DetectionSource) -> DetImage | None:
    """One image and its label file, or None after recording why the image cannot be used."""
    why = outside_root(path, root)
    if why:
        out.rejected.append(Rejection(str(path), None, f"image {why}: not read"))
        return None
    size = _probe(path, max_pixels, out)
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


def read_yolo(src: Path, *, val_fraction: float = 0.2, seed: int = 0,
              max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DetectionSource:
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
        per_split = {**per_split, "train": [p for p in assign if assign[p] == "train"],
                     "val": [p for p in assign if assign[p] == "val"]}

    todo = [(split, p) for split, paths in per_split.items() for p in paths]
    for split, path in track(todo, "reading YOLO labels"):
        out.images_seen += 1
        with rejecting_errors(out.rejected, path):
            im = _read_yolo_image(path, split, root, len(names), max_image_pixels, out)
            if im is not None:
                out.images.append(im)
    return out


# ---------------------------------------------------------------- COCO


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
            cid = _as_int(c["id"])
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
    as_int = _as_int(value)
    if as_int is not None:
        return as_int
    return value if isinstance(value, str) and value else None


def _coco_image_path(src: Path, split: str, file_name: str) -> tuple[Path, str | None]:
    """Where `file_name` is, and why it may not be read (None when it may).

    Only places inside `src` are looked at, so `../` or an absolute file_name never reaches a file outside.
    """
    cands = [src / "images" / split / file_name, src / file_name, src / "images" / file_name]
    inside = [c for c in cands if _within(os.path.abspath(c), os.path.abspath(src))]
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
    for i, (im, key) in enumerate(zip(entries, keys)):
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
        line = _as_int(a.get("id"))
        line = i if line is None else line
        key = _image_key(a.get("image_id"))
        if key not in keys:
            out.boxes_seen += 1
            out.rejected.append(Rejection(str(ann_file), line, f"unknown image_id {a.get('image_id')!r}"))
            continue
        by_image.setdefault(key, []).append((line, a))
    return by_image


def _read_coco_image(src: Path, split: str, ann_file: Path, index: int, im: dict, anns: list,
                     cat_index: dict, max_pixels: int, out: DetectionSource) -> DetImage | None:
    """One `images` entry and its annotations, or None after recording why the image cannot be used."""
    file_name = im["file_name"].strip()
    path, why = _coco_image_path(src, split, file_name)
    if why:
        out.rejected.append(Rejection(str(ann_file), None, f"images[{index}]: file_name {file_name!r} {why}: "
                                                           f"not read{dropped_with(len(anns))}"))
        return None
    size = _probe(path, max_pixels, out)
    if size is None:
        return None
    w, h = size
    if (im.get("width"), im.get("height")) not in ((w, h), (None, None)):
        declared = f"{im.get('width')}x{im.get('height')}"
        out.rejected.append(Rejection(str(path), None, f"image is {w}x{h} but {ann_file.name} says {declared}"
                                                       f"{dropped_with(len(anns))}"))
        return None
    # Crowd annotations (`iscrowd: 1`) mark regions, not trainable boxes: skipped, as every COCO trainer does.
    anns = [(line, a) for line, a in anns if _as_int(a.get("iscrowd") or 0) != 1]
    boxes, labels = [], []
    for line, a in anns:
        out.boxes_seen += 1
        box, why = _coco_box(a, cat_index, w, h)
        if box is None:
            out.rejected.append(Rejection(str(ann_file), line, f"{why} (image {path.name})"))
            continue
        boxes.append(box)
        labels.append(cat_index[_as_int(a["category_id"])])
    return DetImage(path, w, h, boxes, labels, split, [False] * len(boxes), background=not anns)


def read_coco(src: Path, *, val_fraction: float = 0.2, seed: int = 0,
              max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DetectionSource:
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
                det = _read_coco_image(src, split_of[key], ann_file, i, im, by_image.get(key, []), cat_index,
                                       max_image_pixels, out)
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
    cid = _as_int(a.get("category_id"))
    if cid is None:
        return None, f"malformed category_id {a.get('category_id')!r}"
    if cid not in cat_index:
        return None, f"category_id {cid} not in the file's categories"
    return check_box([x, y, x + bw, y + bh], w, h)


# ---------------------------------------------------------------- Pascal VOC


def _voc_splits(src: Path, ann_dir: Path, val_fraction: float, seed: int) -> dict[str, str]:
    """stem -> split from ImageSets/Main/{train,val,test}.txt (first token of each line), else a seeded split."""
    sets = src / "ImageSets" / "Main"
    if not (sets / "train.txt").is_file():
        return seeded_split([p.stem for p in ann_dir.glob("*.xml")], val_fraction, seed)
    split_of: dict[str, str] = {}
    for split in SPLITS:
        f = sets / f"{split}.txt"
        if f.is_file():
            for line in _read_text(f, "split file").splitlines():
                if line.split():
                    split_of.setdefault(line.split()[0], split)
    return split_of


def _read_voc_file(src: Path, xml: Path, stem: str, split: str, max_pixels: int,
                   out: DetectionSource) -> tuple | None:
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
    size = _probe(path, max_pixels, out)
    if size is None:
        return None
    w, h = size
    declared = (_int(root.findtext("size/width")), _int(root.findtext("size/height")))
    if declared[0] and declared[1] and declared != (w, h):
        return reject(path, f"image is {w}x{h} but {xml.name} says {declared[0]}x{declared[1]}"
                            f"{dropped_with(len(objs))}")
    return xml, path, w, h, split, objs


def _voc_image(xml: Path, path: Path, w: int, h: int, split: str, objs: list, index: dict,
               out: DetectionSource) -> DetImage:
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


def read_voc(src: Path, *, val_fraction: float = 0.2, seed: int = 0,
             max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DetectionSource:
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


READERS: dict[str, Callable[..., DetectionSource]] = {"yolo": read_yolo, "coco": read_coco, "voc": read_voc}


def read_detection(src: Path, fmt: str, *, val_fraction: float = 0.2, seed: int = 0,
                   max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DetectionSource:
    """Read SRC in format `fmt` (one of READERS)."""
    if fmt not in READERS:
        raise ConfigError(f"fmt: unknown detection format {fmt!r}; choose one of {sorted(READERS)}")
    return READERS[fmt](Path(src), val_fraction=val_fraction, seed=seed, max_image_pixels=max_image_pixels)
