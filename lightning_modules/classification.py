"""ClassificationModule: a registry backbone trained with top-1/top-5, SGD or AdamW, and LR schedules."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from torch import nn

from lightning_modules.errors import DataError

# Parameters of these modules (and every bias) get no weight decay: decaying a norm's scale or a
# bias only fights the normalisation and costs accuracy (Goyal et al. 2017; He et al. 2019 "tricks").
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups: weights with decay, norm parameters and biases without."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORMS) or name.endswith("bias") or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_lambda(schedule: str, total_steps: int, steps_per_epoch: float, optim: dict[str, Any]):
    """Per-step LR multiplier for the cosine (with linear warmup), step and constant schedules."""
    warmup = int(round(optim.get("warmup_epochs", 0.0) * steps_per_epoch))
    floor = optim.get("min_lr_ratio", 0.0)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if schedule == "step":
            epoch = int(step // max(1.0, steps_per_epoch))
            return optim.get("gamma", 0.1) ** (epoch // max(1, optim.get("step_size", 30)))
        return 1.0

    return f


class ClassificationModule(L.LightningModule):
    """Image classifier over a registry backbone.

    Batches arrive as (uint8 images, labels); conversion to float, normalisation and
    channels_last happen here, on the device. `lr` is the effective (already scaled) LR.
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
    ):
        super().__init__()
        # logger=False: train.py logs the whole job config itself (once per MLflow run).
        self.save_hyperparameters(logger=False)
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        from lightning_modules.losses import build_loss
        from lightning_modules.models import build_model

        self.model = build_model(
            model["name"],
            num_classes=num_classes,
            width=model.get("width", 1.0),
            activation=model.get("activation"),
            dropout=model.get("dropout"),
            small_input=model.get("small_input", False),
        )
        if model.get("pretrained_checkpoint"):
            load_pretrained(self.model, model["pretrained_checkpoint"])
        self.criterion = build_loss(loss["name"], num_classes=num_classes, label_smoothing=loss.get("label_smoothing", 0.0))
        self.lr = lr if lr is not None else optim["lr"]
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
        if images.dtype == torch.uint8:
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
        self.log(f"{split}/loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n, prog_bar=True)
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

    # -- optimisation ----------------------------------------------------------------------------

    def configure_optimizers(self):
        o = self.hparams.optim
        groups = param_groups(self.model, o.get("weight_decay", 0.0))
        if o["name"] == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=o.get("momentum", 0.9), nesterov=o.get("nesterov", False))
        elif o["name"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=self.lr)
        else:
            raise ValueError(f"optim.name {o['name']!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        steps_per_epoch = total / epochs
        schedule = o.get("schedule", "cosine")
        if schedule == "onecycle":
            pct = o.get("warmup_epochs", 0.0) / epochs or 0.3
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=self.lr, total_steps=total, pct_start=min(max(pct, 1.0 / total), 0.99)
            )
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, total, steps_per_epoch, o))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Copy matching weights from a Lightning checkpoint or a state_dict; a head of another size is skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "model.pretrained_checkpoint: file not found")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    state = {k.removeprefix("model."): v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise DataError(path, "no weights in this checkpoint match the model (wrong architecture?)")
    model.load_state_dict(usable, strict=False)
    return {"loaded": sorted(usable), "skipped": sorted(set(own) - set(usable))}
