"""How training reads a prepared classification folder (made by `imagenet_prep.prep_classification`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_modules.errors import DataError

SPLITS = ("train", "val", "test")  # test: held out, only when the prepared source had one


@dataclass(frozen=True)
class PreparedClassification:
    """The manifest of a prepared classification folder, as training needs it."""

    root: Path
    classes: list[str]  # human names, in label-index order
    wnids: list[str]  # folder names / WordNet ids, in label-index order
    mean: tuple[float, float, float]  # per channel, 0..1 scale, train split
    std: tuple[float, float, float]
    image_size: int
    counts: dict[str, int]  # {"train": n, "val": n, "rejected": n[, "test": n]}
    source_data_version: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_prepared(prepared_dir: str | Path) -> PreparedClassification:
    """Read `prepared_dir/manifest.json`; DataError if it is missing or not a classification manifest."""
    root = Path(prepared_dir)
    path = root / "manifest.json"
    if not path.is_file():
        raise DataError(path, "no manifest.json here: run the classification prep first")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"manifest is not valid JSON: {e}") from None
    if m.get("kind") != "classification" or m.get("format") != "litdata":
        raise DataError(path, f"not a litdata classification manifest (kind={m.get('kind')!r})")
    classes = sorted(m["classes"], key=lambda c: c["index"])
    return PreparedClassification(
        root=root,
        classes=[c["name"] for c in classes],
        wnids=[c["wnid"] for c in classes],
        mean=tuple(m["mean"]),
        std=tuple(m["std"]),
        image_size=int(m["image_size"]),
        counts=dict(m["totals"]),
        source_data_version=m.get("source_data_version"),
    )


def open_split(prepared_dir: str | Path, split: str, **kwargs: Any):
    """A `litdata.StreamingDataset` over one split; kwargs go to it (shuffle=, seed=, drop_last=, transform=).

    Samples are `{"image": uint8 tensor [3,S,S], "label": int}`; under DDP the dataset shards itself per rank.
    """
    import litdata  # lazy: litdata imports torch; Dagster loads this module

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(prepared_dir) / split
    if not (folder / "index.json").is_file():
        raise DataError(folder, "no prepared litdata split here (index.json missing): run the prep first")
    return litdata.StreamingDataset(str(folder.resolve()), **kwargs)
