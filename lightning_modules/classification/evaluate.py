"""Evaluate a trained classifier on one split of a prepared set (by default the held-out `test` split).

    visionflow evaluate CHECKPOINT --data PREPARED --split test --out DIR [--json]

One process, no shuffling, a fixed order: the same checkpoint and data give the same numbers.
Writes DIR/evaluation.json, DIR/confusion_matrix.png and DIR/per_class_accuracy.png.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_modules.classification.datamodule import EvalTransform, collate
from lightning_modules.data.streaming import open_split, read_prepared
from lightning_modules.errors import ConfigError, DataError
from lightning_modules.models import build_model
from lightning_modules.tracking import confusion_figure
from lightning_modules.training.checkpoints import load_checkpoint

log = logging.getLogger("visionflow")

RESULT_FILE = "evaluation.json"


class Classifier(nn.Module):
    """A backbone with the input normalisation it was trained with.

    Input: images as uint8 (or 0..255 floats) [N, 3, S, S]; output: logits [N, K]. Self-contained, so
    it can be logged to / loaded from the MLflow registry and used without the training code's config.
    """

    def __init__(
        self, backbone: nn.Module, mean, std, class_names: list[str] | None = None, image_size: int | None = None
    ):
        super().__init__()
        self.image_size = image_size  # what it was trained at (None in checkpoints older than predict)
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.class_names = list(class_names) if class_names else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x.float() - self.mean) / self.std)


def load_classifier(checkpoint: str | Path) -> Classifier:
    """Rebuild the network of one of our Lightning checkpoints from its saved hyperparameters, with its weights.

    No pretrained file is read again (a transfer run's `model.pretrained_checkpoint` may be gone by now).
    """
    path = Path(checkpoint)
    blob = load_checkpoint(path)
    hp = blob.get("hyper_parameters")
    if (
        not isinstance(hp, dict)
        or not isinstance(hp.get("model"), dict)
        or not isinstance(blob.get("state_dict"), dict)
    ):
        raise DataError(path, "not a visionflow training checkpoint (no hyper_parameters.model / state_dict)")
    m = hp["model"]
    backbone = build_model(
        m["name"],
        num_classes=hp["num_classes"],
        width=m.get("width", 1.0),
        activation=m.get("activation"),
        dropout=m.get("dropout"),
        small_input=m.get("small_input", False),
        stem_stride=m.get("stem_stride"),
    )
    state = {k[len("model.") :]: v for k, v in blob["state_dict"].items() if k.startswith("model.")}
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(path, f"weights do not fit the saved model settings: {str(exc)[:300]}") from None
    model = Classifier(
        backbone, hp.get("mean", (0.5,) * 3), hp.get("std", (0.25,) * 3), hp.get("class_names"), hp.get("image_size")
    )
    return model.eval()


def evaluate(
    checkpoint: Path,
    prepared_dir: Path,
    *,
    split: str = "test",
    out_dir: Path,
    batch_size: int = 128,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy, mean loss and a confusion matrix of a checkpoint on one split."""
    model = load_classifier(checkpoint)
    result = evaluate_module(
        model, prepared_dir, split=split, out_dir=out_dir, batch_size=batch_size, image_size=image_size, write=False
    )
    result["checkpoint"] = str(Path(checkpoint).resolve())
    _write(result, Path(out_dir))
    return result


def evaluate_module(
    model: nn.Module,
    prepared: Path,
    *,
    split: str = "test",
    out_dir: Path,
    batch_size: int = 128,
    image_size: int | None = None,
    mean=None,
    std=None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate any classifier module (e.g. one loaded from the MLflow registry) on `prepared/split`.

    A `Classifier` gets uint8 images (it normalises itself); any other module gets images normalised
    with `mean`/`std` (0..1 scale), by default the prepared set's.
    """
    prepared, out_dir = Path(prepared), Path(out_dir)
    info = read_prepared(prepared)
    _check_split(prepared, split)
    names = list(info.classes)
    own_names = getattr(model, "class_names", None)
    if own_names and list(own_names) != names and list(own_names) != list(info.wnids):
        raise ConfigError(
            f"the model's classes ({', '.join(own_names[:5])}...) are not those of {prepared} "
            f"({', '.join(names[:5])}...): evaluate it on the set it was trained for"
        )
    self_normalising = isinstance(model, Classifier)
    scale_mean = torch.tensor(mean or info.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    scale_std = torch.tensor(std or info.std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    k = info.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    top5_hits, loss_sum, n, nan = 0, 0.0, 0, False
    correct: list[bool] = []  # per image, in the split's order: the promotion's paired bootstrap uses it
    topk = min(5, k)
    model.eval()
    with torch.inference_mode():
        for images, labels in split_batches(prepared, split, batch_size, image_size or info.image_size):
            x = images if self_normalising else (images.float() - scale_mean) / scale_std
            logits = model(x).float()
            if logits.ndim != 2 or logits.shape[1] != k:
                raise ConfigError(
                    f"the model gives {tuple(logits.shape[1:])} outputs per image, {prepared} has "
                    f"{k} classes: evaluate it on the set it was trained for"
                )
            finite = torch.isfinite(logits).all(dim=1)
            nan = nan or not bool(finite.all())
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            pred = logits.argmax(1)
            correct += (pred == labels).tolist()
            confusion += torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
            top5_hits += int((logits.topk(topk, dim=1).indices == labels[:, None]).any(1).sum())
            n += labels.numel()
    if n == 0:
        raise DataError(prepared / split, "the split holds no images")
    per_class_n = confusion.sum(1)
    per_class = {
        name: (float(confusion[i, i] / per_class_n[i]) if per_class_n[i] else None) for i, name in enumerate(names)
    }
    result = {
        "split": split,
        "prepared_dir": str(prepared.resolve()),
        "n": n,
        "top1": float(confusion.diag().sum()) / n,
        "top5": top5_hits / n,
        "top5_k": topk,
        "mean_loss": loss_sum / n,
        "nan": nan or not math.isfinite(loss_sum),
        "per_class": per_class,
        "per_class_n": {name: int(c) for name, c in zip(names, per_class_n.tolist())},
        "classes": names,
        "confusion_matrix": confusion.tolist(),
        "source_data_version": info.source_data_version,
        "correct": correct,
    }
    result["figures"] = _figures(result, out_dir)
    if write:
        _write(result, out_dir)
    return result


def _check_split(prepared: Path, split: str) -> None:
    if (prepared / split / "index.json").is_file():
        return
    if split == "test":
        raise DataError(
            prepared / split,
            "no held-out test split here: the prepared source had no test/<class>/ "
            "folder (`visionflow data synth` writes transfer/test; "
            "--test-per-class N adds imagenet/test)",
        )
    raise DataError(prepared / split, f"no prepared '{split}' split here (index.json missing)")


def split_batches(prepared: Path, split: str, batch_size: int, size: int):
    """(uint8 images, labels) batches in the split's stored order, in this process."""
    ds = open_split(prepared, split, shuffle=False, transform=EvalTransform(size))
    batch: list[dict[str, Any]] = []
    for i in range(len(ds)):
        batch.append(ds[i])
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch:
        yield collate(batch)


def _figures(result: dict[str, Any], out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [
        confusion_figure(
            result["confusion_matrix"], result["classes"], out_dir / "confusion_matrix.png", split=result["split"]
        )
    ]
    made.append(per_class_figure(result["per_class"], out_dir / "per_class_accuracy.png", result["split"]))
    return [str(p) for p in made]


def per_class_figure(per_class: dict[str, float | None], out: Path, split: str = "test") -> Path:
    import matplotlib  # lazy: matplotlib loads at draw time, Agg chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")

    names = list(per_class)
    values = [per_class[n] if per_class[n] is not None else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names) + 2), 4))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), [n[:18] for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Per-class accuracy ({split})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _write(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out_dir / RESULT_FILE)


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"{result['split']}: {result['n']} images, top-1 {result['top1']:.4f}, top-{result['top5_k']} "
        f"{result['top5']:.4f}, mean loss {result['mean_loss']:.4f}" + (", NON-FINITE LOGITS" if result["nan"] else "")
    ]
    for name, acc in result["per_class"].items():
        lines.append(f"  {name:<32} {'-' if acc is None else f'{acc:.3f}'} ({result['per_class_n'][name]} images)")
    lines += [f"figures: {', '.join(result['figures'])}"]
    return "\n".join(lines)
