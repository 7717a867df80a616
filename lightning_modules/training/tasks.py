"""What differs between the training tasks (config `task`): data, module, the metric that picks the
best checkpoint, and task callbacks. train.py does everything else the same way for all of them.

The task functions import torch and Lightning when they run: resolving a task (train.py does it before any
rank starts, also in the parent that only relaunches under torchrun) loads neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_modules.config import JobConfig
from lightning_modules.data.streaming import read_prepared
from lightning_modules.errors import ConfigError


@dataclass
class Built:
    datamodule: Any
    module: Any
    extra: dict[str, Any]  # logged as MLflow params and reported at start


@dataclass(frozen=True)
class Task:
    name: str
    check_data: Callable[[Path], Any]  # DataError naming the path, before any rank starts
    build: Callable[[JobConfig, Path, float], Built]
    monitor: str  # the best checkpoint and early stopping follow this metric
    mode: str
    callbacks: Callable[[JobConfig], list] = lambda cfg: []
    distributed_sampler: bool = False  # litdata shards per rank itself; map-style sets need Lightning's sampler
    # train_batches(images, batch size, ranks): training batches per rank and epoch. litdata deals whole
    # batches to the ranks and drops the rest (drop_last), the default here.
    train_batches: Callable[[int, int, int], int] = lambda n, batch, world: (n // batch) // world


def _check_classification(data: Path):
    return read_prepared(data)


def _build_classification(cfg: JobConfig, data: Path, lr: float) -> Built:
    from lightning_modules.classification.datamodule import ClassificationDataModule, trains_on_gpu  # lazy: torch
    from lightning_modules.classification.module import ClassificationModule, input_normalization  # lazy: torch

    dm = ClassificationDataModule(data, cfg.data, seed=cfg.trainer.seed, on_gpu=trains_on_gpu(cfg.trainer.accelerator))
    mean, std = input_normalization(cfg.model.model_dump(), dm.info.mean, dm.info.std)
    module = ClassificationModule(
        model=cfg.model.model_dump(),
        optim=cfg.optim.model_dump(),
        loss=cfg.loss.model_dump(),
        num_classes=dm.num_classes,
        mean=mean,
        std=std,
        lr=lr,
        channels_last=cfg.trainer.channels_last,
        compile=cfg.trainer.compile,
        class_names=dm.class_names,
        augment=dm.device_augment(),
        image_size=dm.image_size,
    )
    extra = {
        "num_classes": dm.num_classes,
        "train_samples": dm.info.counts.get("train"),
        "val_samples": dm.info.counts.get("val"),
        "image_size": dm.image_size,
    }
    return Built(dm, module, extra)


def _check_detection(data: Path):
    from lightning_modules.detection.data import read_prepared_detection  # lazy: Lightning

    return read_prepared_detection(data)


def _build_detection(cfg: JobConfig, data: Path, lr: float) -> Built:
    from lightning_modules.classification.module import input_normalization  # lazy: torch
    from lightning_modules.detection.data import DetectionDataModule, anchors_for  # lazy: torch
    from lightning_modules.detection.module import DetectionModule  # lazy: torch

    dm = DetectionDataModule(data, cfg.data, cfg.detection, seed=cfg.trainer.seed)
    d = cfg.detection
    anchors = d.anchors if d.anchors is not None else anchors_for(dm.info, d.version, dm.image_size)
    # A pretrained body keeps the input normalisation it learned with; from scratch: YOLO's 0..1 scaling.
    mean, std = input_normalization(cfg.model.model_dump(), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    module = DetectionModule(
        model=cfg.model.model_dump(),
        detection=d.model_dump(),
        optim=cfg.optim.model_dump(),
        num_classes=dm.num_classes,
        image_size=dm.image_size,
        anchors=anchors,
        class_names=dm.class_names,
        mean=mean,
        std=std,
        lr=lr,
        seed=cfg.trainer.seed,
    )
    counts = dm.info.counts
    extra = {
        "num_classes": dm.num_classes,
        "train_samples": counts.get("train", {}).get("images"),
        "val_samples": counts.get("val", {}).get("images"),
        "image_size": dm.image_size,
        "anchors": anchors,
    }
    return Built(dm, module, extra)


def _detection_callbacks(cfg: JobConfig) -> list:
    if cfg.detection.ema_decay is None or cfg.trainer.fast_dev_run:
        return []
    from lightning_modules.detection.ema import RampedEMA  # lazy: torch

    return [RampedEMA(cfg.detection.ema_decay, cfg.detection.ema_tau)]


def _detection_train_batches(n: int, batch: int, world: int) -> int:
    """Lightning's DistributedSampler pads each rank to ceil(n / world); DetectionDataModule drops a last
    partial batch only when that loses little (n >= 4 batches)."""
    per_rank = -(-n // world)
    return per_rank // batch if n >= 4 * batch else -(-per_rank // batch)


TASKS: dict[str, Task] = {
    "classification": Task("classification", _check_classification, _build_classification, "val/loss", "min"),
    # YOLOv5's fitness: mostly mAP@0.5:0.95, a little mAP@0.5.
    "detection": Task(
        "detection",
        _check_detection,
        _build_detection,
        "val/fitness",
        "max",
        callbacks=_detection_callbacks,
        distributed_sampler=True,
        train_batches=_detection_train_batches,
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task {name!r} is unknown; choose one of: {', '.join(TASKS)}") from None
