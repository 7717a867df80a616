"""ClassificationDataModule: the prepared litdata splits, as uint8 batches.

Images stay uint8 until they reach the device (4x less to copy); the module converts to float and
normalises with the manifest's mean/std there. No per-sample work: the loader stacks the stored images,
and the training augmentation (random resized crop, flip, colour jitter; batch_augment.BatchAugment)
runs on whole batches, each image with its own random draw: in the loader's workers when training on a
CPU (AugmentingCollate), on the device after the transfer when training on a GPU (the module's
`augment`). Under DDP each rank streams its own shard (litdata shards by rank and worker by itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from litdata import StreamingDataLoader
from torchvision.transforms import v2

from lightning_modules.classification.batch_augment import BatchAugment
from lightning_modules.config import DataConfig
from lightning_modules.data.streaming import PreparedClassification, open_split, read_prepared


class EvalTransform:
    """Resize only when the prepared size differs from the requested one."""

    def __init__(self, size: int):
        self.size = size
        self.t = v2.Resize((size, size), antialias=True)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        if _wrong_size(image, self.size):
            image = self.t(image)
        return {"image": image, "label": sample["label"]}


def _wrong_size(image: torch.Tensor, size: int) -> bool:
    return image.shape[-1] != size or image.shape[-2] != size


def collate(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N,3,S,S], int64 labels [N])."""
    images = torch.stack([s["image"] for s in samples])
    labels = torch.as_tensor([int(s["label"]) for s in samples], dtype=torch.long)
    return images, labels


def trains_on_gpu(accelerator: str) -> bool:
    """Whether a job with this trainer.accelerator trains on a GPU (where the batch augmentation goes)."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


class AugmentingCollate:
    """collate, then the batch augmentation, back to uint8 (as torchvision's v2 transforms return uint8
    images): the CPU path, run in the loader's worker processes (each seeds torch with its own seed)."""

    def __init__(self, augment: BatchAugment):
        self.augment = augment

    def __call__(self, samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = collate(samples)
        return self.augment(images).round_().clamp_(0, 255).to(torch.uint8), labels


class ClassificationDataModule(L.LightningDataModule):
    """Train/val loaders over `prepared_dir/{train,val}` (see data/streaming.py for the format)."""

    def __init__(self, prepared_dir: str | Path, data: DataConfig, seed: int = 0, on_gpu: bool = False):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.cfg = data
        self.seed = seed
        # Reads and checks the manifest now, so a bad --data fails before any rank starts work.
        self.info: PreparedClassification = read_prepared(self.prepared_dir)
        self.image_size = data.image_size or self.info.image_size
        self.batch_size = data.batch_size  # an attribute, so Lightning's Tuner can scale it
        self.augment_on_device = data.augment and (
            data.augment_on == "device" or (data.augment_on == "auto" and on_gpu)
        )
        self.train_ds = None
        self.val_ds = None

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.info.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is None and stage in (None, "fit"):
            self.train_ds = open_split(
                self.prepared_dir,
                "train",
                shuffle=self.cfg.shuffle,
                seed=self.seed,
                drop_last=True,
                # Augmenting: the stored size (the batch crop resizes); else the training size.
                transform=EvalTransform(self.info.image_size if self.cfg.augment else self.image_size),
            )
        if self.val_ds is None and stage in (None, "fit", "validate"):
            # drop_last=False: litdata drops to whole batches per rank by default under DDP, which left a small
            # val set with zero batches per rank (Lightning then stops: "zero length").
            self.val_ds = open_split(
                self.prepared_dir, "val", shuffle=False, drop_last=False, transform=EvalTransform(self.image_size)
            )

    def batch_augment(self) -> dict[str, Any] | None:
        """BatchAugment's settings for the train batches (None: no augmentation)."""
        if not self.cfg.augment:
            return None
        return {"size": self.image_size, "scale": (self.cfg.crop_scale_min, 1.0), "color_jitter": self.cfg.color_jitter}

    def device_augment(self) -> dict[str, Any] | None:
        """What the module applies after the transfer (the GPU path), else None."""
        return self.batch_augment() if self.augment_on_device else None

    def _loader(self, ds, drop_last: bool, batch_size: int | None = None, collate_fn=collate):
        return StreamingDataLoader(
            ds,
            batch_size=batch_size or self.batch_size,
            num_workers=self.cfg.num_workers,
            collate_fn=collate_fn,
            drop_last=drop_last,
            pin_memory=torch.cuda.is_available(),
            # Workers live across epochs: starting them cost ~40 ms an epoch, a third of a small epoch.
            # litdata still reshuffles each epoch in live workers (tests/lightning/test_datamodule.py).
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self):
        settings = self.batch_augment()
        if settings is None or self.augment_on_device:
            return self._loader(self.train_ds, drop_last=True)
        return self._loader(self.train_ds, drop_last=True, collate_fn=AugmentingCollate(BatchAugment(**settings)))

    def val_dataloader(self):
        # litdata deals whole batches to the ranks and the leftover to the last one: with a batch larger than
        # a rank's share, rank 0 got nothing and Lightning stopped. Every val image is still seen exactly once.
        world = self.trainer.world_size if self.trainer is not None else 1
        share = max(1, (self.info.counts.get("val") or 0) // world)
        return self._loader(self.val_ds, drop_last=False, batch_size=min(self.batch_size, share))
