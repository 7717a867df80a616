"""DetectionModule: a YOLO detector trained with Lightning (multi-scale, body freezing, mAP on validation).

Batches arrive as (uint8 images, targets) from detection/data.py; conversion and normalisation
happen on the device. Validation decodes with a low confidence floor and class-aware NMS and
scores COCO mAP with torchmetrics (faster-coco-eval backend), gathered across ranks. EMA of the
weights is a callback (ema.py), so validation and checkpoints see the averaged weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from lightning_modules.config import DetectionConfig, ModelConfig, OptimConfig, from_saved
from lightning_modules.detection.decode import postprocess
from lightning_modules.detection.models import build_detector, config_options, load_backbone
from lightning_modules.detection.predictor import predictor_from_module
from lightning_modules.detection.scoring import evaluate_loader
from lightning_modules.training.optim import BodyFreezing, configure_optimization

log = logging.getLogger("visionflow")


class DetectionModule(BodyFreezing, L.LightningModule):
    """YOLO v1/v2/v3 (`detection.version`) on a registry backbone (`model.name`).

    `anchors` are (w, h) pixels at `image_size`; `lr` is the effective (already scaled) LR.
    """

    def __init__(
        self,
        model: dict[str, Any],
        detection: dict[str, Any],
        optim: dict[str, Any],
        num_classes: int,
        image_size: int,
        anchors: list[list[float]] | None = None,
        class_names: list[str] | None = None,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        lr: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        # Saved as plain dicts (a weights-only checkpoint load reads them back); used typed.
        self.detection_config = d = from_saved(DetectionConfig, detection)
        self.model_config = m = from_saved(ModelConfig, model)
        self.optim_config = from_saved(OptimConfig, optim)
        self.detector = build_detector(
            d.version,
            m.name,
            num_classes,
            anchors,
            width=m.width,
            small_input=m.small_input,
            stem_stride=m.stem_stride,
            image_size=image_size,
            **config_options(d),
        )
        if m.pretrained_checkpoint:
            load_backbone(self.detector, m.pretrained_checkpoint)
        self.lr = lr if lr is not None else self.optim_config.lr
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
        self.val_map.warn_on_many_detections = False
        self.last_loss: torch.Tensor | None = None  # read by NanGuard
        self.last_confusion = None  # classification's figure hook; detection draws its own
        self._size = image_size

    def body(self) -> nn.Module:
        return self.detector.backbone.body

    # -- inputs ----------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = batch
        if images.dtype == torch.uint8:
            images = (images.float() - self.mean) / self.std
        if self.training and self.detection_config.multiscale:
            images, targets = self._rescale(images, targets)
        return images, targets

    def _rescale(
        self, images: torch.Tensor, targets: list[dict], step: int | None = None
    ) -> tuple[torch.Tensor, list[dict]]:
        """YOLOv2's multi-scale training: a new input size every k batches, the same on every rank
        (drawn from the step number), boxes scaled with the images."""
        d = self.detection_config
        step = self.global_step if step is None else step
        period = step // max(1, d.multiscale_every)
        size = random.Random(self.hparams.seed * 1_000_003 + period).choice(list(d.multiscale or [images.shape[-1]]))
        current = images.shape[-1]
        if size == current:
            return images, targets
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        k = size / current
        return images, [{**t, "boxes": t["boxes"] * k} for t in targets]

    def forward(self, images: torch.Tensor):
        return self.detector(images)

    # -- steps -----------------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss, parts = self.detector.loss(self(images), targets, images.shape[-2:])
        n = images.shape[0]
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train/{name}", float(value), on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        self.log("train/input_size", float(images.shape[-1]), on_step=True, on_epoch=False)
        self.last_loss = loss.detach()
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, targets = batch
        raw = self(images)
        loss, _ = self.detector.loss(raw, targets, images.shape[-2:])
        self.log("val/loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=images.shape[0])
        self.val_map.update(
            self.decode(raw, images.shape[-2:]), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        )

    def decode(self, raw, size) -> list[dict[str, torch.Tensor]]:
        d = self.detection_config
        boxes, scores = self.detector.decode(raw, size)
        return postprocess(
            boxes.float(),
            scores.float(),
            size,
            conf=d.conf_threshold,
            iou=d.nms_iou,
            agnostic=d.class_agnostic_nms,
            max_det=d.max_det,
            multi_label=d.multi_label,
        )

    def on_validation_epoch_end(self) -> None:
        # compute() gathers every rank's detections (a collective: all ranks call it).
        with contextlib.redirect_stdout(io.StringIO()):
            r = self.val_map.compute()
        self.val_map.reset()
        for key in ("map", "map_50", "map_75", "mar_100"):
            # -1 means "no ground truth"; report 0 so checkpoints and curves stay comparable
            self.log(f"val/{key}", max(float(r[key]), 0.0), sync_dist=False)
        fitness = 0.1 * max(float(r["map_50"]), 0.0) + 0.9 * max(float(r["map"]), 0.0)
        self.log("val/fitness", fitness, sync_dist=False, prog_bar=True)

    def configure_optimizers(self):
        return configure_optimization(self, self.detector, self.optim_config, self.lr)

    # -- end of training: figures ---------------------------------------------------------------

    def final_figures(self, datamodule, out_dir: Path) -> tuple[list[Path], dict[str, Any]]:
        """Validation PR curves, confusion matrix and drawn samples (rank 0, after fit)."""
        res = evaluate_loader(
            predictor_from_module(self),
            datamodule.val_dataloader(),
            datamodule.class_names,
            out_dir,
            rows=datamodule.val_ds.rows,
            root=datamodule.prepared_dir,
        )
        return [Path(p) for p in res["figure_paths"]], {f"val_{k}": res[k] for k in ("map", "map_50", "voc07_ap50")}
