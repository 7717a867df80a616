"""ClassificationModule: a registry backbone trained with top-1/top-5, SGD or AdamW, and LR schedules."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from lightning_modules.classification.batch_augment import BatchAugment
from lightning_modules.classification.losses import build_loss
from lightning_modules.config import LossConfig, ModelConfig, OptimConfig, from_saved
from lightning_modules.errors import ConfigError, DataError
from lightning_modules.models import build_model
from lightning_modules.models.backbone import load_torchvision_weights
from lightning_modules.training.checkpoints import load_checkpoint
from lightning_modules.training.optim import (  # noqa: F401  (lr_lambda, param_groups: re-exported)
    BodyFreezing,
    configure_optimization,
    lr_lambda,
    param_groups,
)

log = logging.getLogger("visionflow")


class ClassificationModule(BodyFreezing, L.LightningModule):
    """Image classifier over a registry backbone.

    Batches arrive as (uint8 images, labels); the training augmentation (`augment`: BatchAugment's
    settings), conversion to float, normalisation and channels_last happen here, on the device. `lr` is
    the effective (already scaled) LR.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        loss: dict[str, Any],
        num_classes: int,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        lr: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
        class_names: list[str] | None = None,
        augment: dict[str, Any] | None = None,
        image_size: int | None = None,  # the training input size, kept for predict and export
    ):
        super().__init__()
        # logger=False: train.py logs the whole job config itself (once per MLflow run).
        self.save_hyperparameters(logger=False)
        # Saved as plain dicts (a weights-only checkpoint load reads them back); used typed.
        self.model_config = m = from_saved(ModelConfig, model)
        self.optim_config = from_saved(OptimConfig, optim)
        self.loss_config = from_saved(LossConfig, loss)
        self.model = build_model(
            m.name,
            num_classes=num_classes,
            width=m.width,
            activation=m.activation,
            dropout=m.dropout,
            small_input=m.small_input,
            stem_stride=m.stem_stride,
        )
        if m.pretrained_checkpoint:
            load_pretrained(self.model, m.pretrained_checkpoint, expect=m.model_dump())
        elif m.torchvision_weights:
            load_torchvision_weights(self.model, m.torchvision_weights)
        self.criterion = build_loss(
            self.loss_config.name, num_classes=num_classes, label_smoothing=self.loss_config.label_smoothing
        )
        self.lr = lr if lr is not None else self.optim_config.lr
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        top5 = min(5, num_classes)
        for split in ("train", "val"):
            setattr(self, f"{split}_acc1", MulticlassAccuracy(num_classes, top_k=1, average="micro"))
            setattr(self, f"{split}_acc5", MulticlassAccuracy(num_classes, top_k=top5, average="micro"))
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.last_confusion: torch.Tensor | None = None  # [K,K] counts of the last validation (all ranks)
        self.last_loss: torch.Tensor | None = None  # read by NanGuard
        self._compiled = False
        # Train batches only; no parameters, so checkpoints are the same with or without it.
        self.train_augment = BatchAugment(**augment) if augment else None

    # -- setup -----------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.hparams.compile and not self._compiled:
            # In place, so state_dict keys (and checkpoints) stay those of the plain model.
            self.model.compile()
            self._compiled = True

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if self.train_augment is not None and self.trainer.training:
            images = (self.train_augment(images) - self.mean) / self.std
        elif images.dtype == torch.uint8:
            images = (images.float() - self.mean) / self.std
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- steps -----------------------------------------------------------------------------------

    def _step(self, batch: Any, split: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        acc1, acc5 = getattr(self, f"{split}_acc1"), getattr(self, f"{split}_acc5")
        acc1.update(logits.detach(), labels)
        acc5.update(logits.detach(), labels)
        n = labels.shape[0]
        self.log(
            f"{split}/loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n, prog_bar=True
        )
        self.log(f"{split}/acc1", acc1, on_step=False, on_epoch=True, batch_size=n, prog_bar=split == "val")
        self.log(f"{split}/acc5", acc5, on_step=False, on_epoch=True, batch_size=n)
        if split == "val":
            self.val_confusion.update(logits.detach().argmax(1), labels)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        self.last_loss = loss.detach()
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        # compute() gathers the counts of every rank (a collective: all ranks call it).
        self.last_confusion = self.val_confusion.compute().cpu()
        self.val_confusion.reset()
        if not self.trainer.sanity_checking:
            # How many images this validation saw, all ranks together: under DDP it must be the whole split.
            self.log("val/images", float(self.last_confusion.sum()), on_epoch=True, sync_dist=False)

    # -- fine-tuning (BodyFreezing) and optimisation --------------------------------------------

    def body(self) -> nn.Module:
        return self.model.body

    def configure_optimizers(self):
        return configure_optimization(self, self.model, self.optim_config, self.lr)


# torchvision's ImageNet weights expect inputs normalised with these (0..1 scale).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def input_normalization(model: dict[str, Any], data_mean, data_std) -> tuple[tuple, tuple]:
    """Mean/std for the inputs: a transferred body keeps the normalisation it was trained with
    (its batch-norm statistics and first filters expect it); otherwise the training data's own."""
    if model.get("torchvision_weights"):
        return IMAGENET_MEAN, IMAGENET_STD
    if model.get("pretrained_checkpoint") and Path(model["pretrained_checkpoint"]).is_file():
        hp = load_checkpoint(model["pretrained_checkpoint"], "model.pretrained_checkpoint").get("hyper_parameters")
        if hp and hp.get("mean") is not None and hp.get("std") is not None:
            return tuple(hp["mean"]), tuple(hp["std"])
    return tuple(data_mean), tuple(data_std)


# Model settings that change the weights' meaning or shapes: a checkpoint must agree on them.
_ARCH_KEYS = ("name", "width")


def load_pretrained(model: nn.Module, path: str | Path, expect: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Initialise `model` from a Lightning checkpoint (ours) or a state_dict, except the classifier.

    Every weight but the final classifier (`head.fc`, left freshly initialised for this job's classes)
    must be in the file with the same shape, else ConfigError. `expect` (this job's model config) is
    checked against the checkpoint's saved model settings first, so a mismatch names the setting.
    """
    path = Path(path)
    blob = load_checkpoint(path, "model.pretrained_checkpoint")
    state = blob.get("state_dict", blob)
    if not isinstance(state, dict):
        raise DataError(path, "model.pretrained_checkpoint: not a checkpoint or state dict")
    hp = blob.get("hyper_parameters")
    saved = hp.get("model") if isinstance(hp, dict) else None
    if expect and isinstance(saved, dict):
        differ = [
            f"{k}: checkpoint {saved.get(k)!r}, job {expect.get(k)!r}"
            for k in _ARCH_KEYS
            if k in saved and saved.get(k) != expect.get(k)
        ]
        if differ:
            raise ConfigError(
                f"{path}: model.pretrained_checkpoint was trained with another architecture "
                f"({'; '.join(differ)}); set the job's model.* to match"
            )
        for k in ("small_input", "activation"):
            if k in saved and saved.get(k) != expect.get(k):
                log.warning(
                    "%s: model.%s differs (checkpoint %r, job %r); loading the weights anyway",
                    path,
                    k,
                    saved.get(k),
                    expect.get(k),
                )
    state = {k.removeprefix("model."): v for k, v in state.items() if torch.is_tensor(v)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.fc.")}
    missing = [k for k in own if k not in state]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or mismatched:
        problems = [
            f"missing {missing[:4]}" if missing else "",
            f"shape mismatch {mismatched[:4]}" if mismatched else "",
        ]
        raise ConfigError(
            f"{path}: does not fit model {getattr(model, 'name', type(model).__name__)} "
            f"({'; '.join(p for p in problems if p)}): wrong architecture or width?"
        )
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    log.info("%s: loaded %d tensors; classifier head.fc starts fresh", path, len(own))
    return {"loaded": sorted(own), "skipped": sorted(k for k in model.state_dict() if k not in own)}
