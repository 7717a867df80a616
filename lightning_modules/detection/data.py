"""The prepared detection set as Lightning data: `DetectionDataModule` over `prepared/detection`.

The prepared form (data/detection_prep.py): `manifest.json` (classes, anchors), `{split}.json` rows
`{image, width, height, boxes (xyxy pixels), labels}`, images under `images/<split>/`. Training
samples go through mosaic/letterbox + affine + HSV + flip (augment.TrainTransform; mosaic draws three
other random images of the split); validation samples are letterboxed only. Batches are
`(uint8 images [N,3,S,S], targets)` with one dict per image: `boxes` [K,4] xyxy pixels of the
letterboxed image, `labels` [K], `image_id`, and for evaluation `scale`, `pad`, `orig_size`.
Map-style datasets: under DDP Lightning shards them with a DistributedSampler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from lightning_modules.detection.augment import build_eval_transform, build_train_transform, make_sample
from lightning_modules.errors import DataError

DEFAULT_IMAGE_SIZE = 416


@dataclass
class PreparedDetection:
    root: Path
    classes: list[str]
    anchors: dict[str, list[list[float]]]
    anchor_image_size: int
    counts: dict[str, Any]
    source_data_version: str | None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def rows(self, split: str) -> list[dict]:
        path = self.root / f"{split}.json"
        if not path.is_file():
            raise DataError(path, f"split {split!r} is missing from the prepared detection set")
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not valid JSON ({exc})") from None
        if not isinstance(rows, list):
            raise DataError(path, "expected a list of image rows")
        return rows


def read_prepared_detection(root: str | Path) -> PreparedDetection:
    """Read and check `root/manifest.json` of a prepared detection set (DataError naming the file)."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise DataError(path, "no manifest.json: not a prepared detection set (run `visionflow data prep-detection`)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    if m.get("kind") != "detection":
        raise DataError(path, f"kind is {m.get('kind')!r}, expected 'detection' (is this a classification set?)")
    if not m.get("classes"):
        raise DataError(path, "no classes")
    return PreparedDetection(
        root,
        list(m["classes"]),
        m.get("anchors") or {},
        int(m.get("anchor_image_size", 416)),
        m.get("counts", {}),
        m.get("source_data_version"),
    )


def anchors_for(info: PreparedDetection, version: str, image_size: int) -> list[list[float]] | None:
    """The data stage's k-means anchors for `version`, rescaled from its anchor size to `image_size`."""
    if version == "yolov1":
        return None
    key = {"yolov2": "v2", "yolov3": "v3"}[version]
    if key not in info.anchors:
        raise DataError(
            info.root / "manifest.json", f"no {key} anchors: prepare the data again or set detection.anchors"
        )
    k = image_size / info.anchor_image_size
    return [[round(w * k, 2), round(h * k, 2)] for w, h in info.anchors[key]]


class DetectionDataset(torch.utils.data.Dataset):
    """One split; `transform(image, target[, extras])` from detection.augment."""

    def __init__(self, info: PreparedDetection, split: str, transform, *, mosaic_extras: int = 0):
        self.info, self.split, self.transform = info, split, transform
        self.rows = info.rows(split)
        self.mosaic_extras = mosaic_extras

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, i: int):
        row = self.rows[i]
        path = self.info.root / row["image"]
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as exc:
            raise DataError(path, f"cannot read image ({exc})") from None
        image, target = make_sample(image, row.get("boxes") or [], row.get("labels") or [])
        target["image_id"] = i
        return image, target

    def __getitem__(self, i: int):
        image, target = self.load(i)
        if self.mosaic_extras:
            # Three other random images of the split (torch's generator: seeded per loader worker).
            others = torch.randint(len(self.rows), (self.mosaic_extras,)).tolist()
            image, target = self.transform(image, target, extras=[self.load(j) for j in others])
        else:
            image, target = self.transform(image, target)
        out = {"boxes": target["boxes"].as_subclass(torch.Tensor).float(), "labels": target["labels"], "image_id": i}
        for key in ("scale", "pad", "orig_size"):
            if key in target:
                out[key] = target[key]
        return image.as_subclass(torch.Tensor), out


def collate(samples: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Images (all the same size after letterbox/mosaic) stacked; targets stay a list (box counts differ)."""
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


class DetectionDataModule(L.LightningDataModule):
    """Train/val loaders over a prepared detection set."""

    def __init__(self, prepared_dir: str | Path, data, detection, seed: int = 0):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.cfg, self.det, self.seed = data, detection, seed
        self.info = read_prepared_detection(self.prepared_dir)
        self.image_size = data.image_size or DEFAULT_IMAGE_SIZE
        self.batch_size = data.batch_size
        self.train_ds = self.val_ds = None

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.info.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is None and stage in (None, "fit"):
            d = self.det
            aug = self.cfg.augment
            t = build_train_transform(
                self.image_size,
                mosaic_prob=d.mosaic_prob if aug else 0.0,
                affine=d.affine and aug,
                hsv=d.hsv and aug,
                flip=d.flip if aug else 0.0,
            )
            self.train_ds = DetectionDataset(self.info, "train", t, mosaic_extras=t.num_extras)
            if len(self.train_ds) == 0:
                raise DataError(self.prepared_dir / "train.json", "the train split has no images")
        if self.val_ds is None and stage in (None, "fit", "validate"):
            self.val_ds = DetectionDataset(self.info, "val", build_eval_transform(self.image_size))

    def _loader(self, ds, *, shuffle: bool, drop_last: bool):
        return torch.utils.data.DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=collate,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self):
        # drop_last only when it loses little: a 60-image set must not lose a third of an epoch
        return self._loader(
            self.train_ds, shuffle=self.cfg.shuffle, drop_last=len(self.train_ds) >= 4 * self.batch_size
        )

    def val_dataloader(self):
        return self._loader(self.val_ds, shuffle=False, drop_last=False)
