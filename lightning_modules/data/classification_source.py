"""Find the labelled files of a classification source: ImageNet (raw, Kaggle, torchvision val) or ImageFolder.

Recognised layouts (class index = sorted class folder names):
- `SRC/train/<class>/*` with optional `SRC/val/<class>/*` (torchvision / ImageFolder with splits), or a flat
  `SRC/val/*.JPEG` labelled by Kaggle's `LOC_val_solution.csv` (`ImageId,PredictionString`, first token = wnid);
- Kaggle's `SRC/ILSVRC/Data/CLS-LOC/{train,val}` with the CSV and `LOC_synset_mapping.txt` at `SRC`;
- `SRC/<class>/*` (plain ImageFolder, e.g. a user's photos): no val given, the caller splits.
With train/, an optional `test/<class>/*` (ImageFolder style) is a held-out test split, never used for
model selection.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lightning_modules.data.files import inside, walk_files
from lightning_modules.data.images import is_candidate, is_class_folder
from lightning_modules.errors import DataError

log = logging.getLogger("visionflow")

KAGGLE_DATA_DIR = Path("ILSVRC/Data/CLS-LOC")
VAL_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"

Labelled = list[tuple[str, int]]  # (file path, class index); str, not Path: ~2x less memory for 1.3M files


@dataclass
class ClassificationSource:
    """What `discover` found: classes in index order and the labelled files of each split."""

    root: Path
    layout: str  # "kaggle" (ILSVRC/Data/CLS-LOC), "splits" (train/ [+ val/]) or "imagefolder" (class folders)
    wnids: list[str]
    names: list[str]
    train: Labelled
    val: Labelled | None  # None: no val given, split it off train
    test: Labelled | None = None  # held-out test/<class>/ files, when the source has them
    # (path, reason) of entries not used: symlinks out of the source, symlink loops (rejected by the prep)
    refused: list[tuple[str, str]] = field(default_factory=list)


def discover(src: Path) -> ClassificationSource:
    """List the classes and labelled files under `src`. Raises DataError naming the folder/file at fault."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(src, "source folder does not exist" if not src.exists() else "source is not a folder")
    data_root = src / KAGGLE_DATA_DIR if (src / KAGGLE_DATA_DIR).is_dir() else src
    layout = "kaggle" if data_root != src else "splits"
    if (data_root / "train").is_dir():
        train_root, val_root = data_root / "train", data_root / "val"
    else:
        train_root, val_root, layout = src, None, "imagefolder"

    folders = _class_folders(train_root)
    wnids = [f.name for f in folders]
    names = _class_names(wnids, [src, data_root])
    files = _ClassFiles(src)
    train = [(path, label) for label, folder in enumerate(folders) for path in files(folder)]
    val = _val_files(val_root, wnids, [src, data_root], files) if val_root is not None and val_root.is_dir() else None
    test_root = data_root / "test" if layout != "imagefolder" else None
    test = _test_files(test_root, wnids, files) if test_root is not None and test_root.is_dir() else None
    log.info(
        "%s: %s layout, %d classes, %d train files, %s val files, %s test files",
        src,
        layout,
        len(wnids),
        len(train),
        "no" if val is None else len(val),
        "no" if test is None else len(test),
    )
    return ClassificationSource(src, layout, wnids, names, train, val, test, files.refused)


def stratified_split(samples: Labelled, val_fraction: float, seed: int) -> tuple[Labelled, Labelled]:
    """Split per class, seeded: each class with >= 2 files gets >= 1 val file and keeps >= 1 train file."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for path, label in samples:
        by_class[label].append(path)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        rng.shuffle(paths)
        n_val = 0 if len(paths) < 2 else min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
        val += [(p, label) for p in sorted(paths[:n_val])]
        train += [(p, label) for p in sorted(paths[n_val:])]
    return train, val


def _class_folders(root: Path) -> list[Path]:
    folders = sorted((p for p in root.iterdir() if is_class_folder(p)), key=lambda p: p.name)
    if not folders:
        raise DataError(root, "no class folders found: expected one sub-folder of images per class")
    loose = [p for p in root.iterdir() if p.is_file() and is_candidate(p)]
    if loose:
        log.info("%s: ignoring %d files outside the class folders (e.g. %s)", root, len(loose), loose[0].name)
    return folders


class _ClassFiles:
    """Lists a class folder's candidate files (recursively, like ImageFolder) without leaving the source;
    collects what it refused (symlinks out of the source, loops) for the prep's rejected list."""

    def __init__(self, root: Path):
        self.root = root
        self.refused: list[tuple[str, str]] = []

    def __call__(self, folder: Path) -> list[str]:
        listing = walk_files(folder, self.root, keep=lambda name: is_candidate(Path(name)))
        self.refused += listing.refused
        if not listing.files:
            raise DataError(
                folder,
                f"class folder '{folder.name}' is empty: it holds no image files"
                + (f" inside the source ({listing.refused[0][1]})" if listing.refused else ""),
            )
        return listing.files


def _class_names(wnids: list[str], search: list[Path]) -> list[str]:
    """Human names from LOC_synset_mapping.txt (first name of each line), else the folder name."""
    mapping = _find(SYNSET_MAPPING, search)
    names: dict[str, str] = {}
    if mapping is not None:
        for line in mapping.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, rest = line.strip().partition(" ")
            if wnid:
                names[wnid] = rest.split(",")[0].strip() or wnid
    return [names.get(w, w) for w in wnids]


def _val_files(val_root: Path, wnids: list[str], search: list[Path], class_files: _ClassFiles) -> Labelled | None:
    index = {w: i for i, w in enumerate(wnids)}
    folders = sorted(p for p in val_root.iterdir() if is_class_folder(p))
    csv_path = _find(VAL_CSV, search + [val_root])
    loose = sorted(p for p in val_root.iterdir() if p.is_file() and is_candidate(p) and p != csv_path)
    outside = [p for p in loose if not inside(p, class_files.root)]
    class_files.refused += [(str(p), "symlink leads outside the source: not followed") for p in outside]
    loose = [p for p in loose if p not in outside]
    if folders and loose:
        raise DataError(val_root, "val/ mixes class folders and loose files; use one or the other")
    if folders:  # torchvision / ImageFolder style val/<class>/
        unknown = [f.name for f in folders if f.name not in index]
        if unknown:
            raise DataError(
                val_root / unknown[0], f"val class folder '{unknown[0]}' has no matching train class folder"
            )
        return [(path, index[f.name]) for f in folders for path in class_files(f)]
    if not loose:
        log.warning("%s is empty; splitting val off train instead", val_root)
        return None
    if csv_path is None:
        raise DataError(
            val_root,
            f"val/ holds loose images but no {VAL_CSV} was found (looked in "
            f"{', '.join(str(p) for p in search)}) to label them",
        )
    labels = _read_val_csv(csv_path, index)
    out = []
    for path in loose:
        if path.stem not in labels:
            raise DataError(path, f"val image has no row in {csv_path}")
        out.append((str(path), labels[path.stem]))
    missing = len(labels) - len(out)
    if missing:
        log.warning("%s: %d rows name images that are not in %s; ignored", csv_path, missing, val_root)
    return out


def _test_files(test_root: Path, wnids: list[str], class_files: _ClassFiles) -> Labelled | None:
    """test/<class>/* (ImageFolder style); every folder must name a train class. None when empty."""
    index = {w: i for i, w in enumerate(wnids)}
    folders = sorted(p for p in test_root.iterdir() if is_class_folder(p))
    loose = [p for p in test_root.iterdir() if p.is_file() and is_candidate(p)]
    if loose and not folders:
        raise DataError(test_root, "test/ holds loose images: put them in one sub-folder per class (test/<class>/)")
    unknown = [f.name for f in folders if f.name not in index]
    if unknown:
        raise DataError(test_root / unknown[0], f"test class folder '{unknown[0]}' has no matching train class folder")
    files = [(path, index[f.name]) for f in folders for path in class_files(f)]
    return files or None


def _read_val_csv(csv_path: Path, index: dict[str, int]) -> dict[str, int]:
    """ImageId -> class index from Kaggle's LOC_val_solution.csv."""
    labels: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise DataError(csv_path, f"expected header 'ImageId,PredictionString', found {reader.fieldnames}")
        for row in reader:
            where = f"line {reader.line_num} ({row['ImageId']})"
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise DataError(csv_path, f"{where}: empty PredictionString, expected a wnid first")
            wnid = tokens[0]
            if wnid not in index:
                raise DataError(csv_path, f"{where}: wnid '{wnid}' is not one of the {len(index)} train class folders")
            if labels.get(row["ImageId"], index[wnid]) != index[wnid]:
                raise DataError(csv_path, f"{where}: image listed twice with different classes")
            labels[row["ImageId"]] = index[wnid]
    return labels


def _find(name: str, search: list[Path]) -> Path | None:
    return next((d / name for d in search if (d / name).is_file()), None)
