"""Evaluating and using a trained detector: load a checkpoint, score a prepared split in the images'
own pixels (COCO mAP, VOC AP, PR curves, confusion matrix, drawn samples), predict on image files
(`visionflow predict`, `visionflow evaluate` with a detector checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from lightning_modules.data.images import image_files
from lightning_modules.detection.augment import build_eval_transform, letterbox, make_sample, unletterbox_boxes
from lightning_modules.detection.data import DetectionDataset, collate, read_prepared_detection
from lightning_modules.detection.metrics import draw_samples
from lightning_modules.detection.module import DetectionModule
from lightning_modules.detection.predictor import YoloPredictor, predictor_from_module
from lightning_modules.detection.scoring import evaluate_loader
from lightning_modules.errors import DataError
from lightning_modules.export.runtime import OnnxDetector, is_onnx
from lightning_modules.reporting.progress import track
from lightning_modules.training.checkpoints import load_checkpoint


def load_predictor(checkpoint: str | Path) -> YoloPredictor:
    """The predictor of one of our detector checkpoints (EMA weights when training used EMA)."""
    path = Path(checkpoint)
    blob = load_checkpoint(path, "detector checkpoint")
    hp = blob.get("hyper_parameters")
    if not isinstance(hp, dict) or "detection" not in hp or not isinstance(blob.get("state_dict"), dict):
        raise DataError(path, "not a visionflow detector checkpoint (no detection hyper-parameters)")
    # The backbone's pretraining checkpoint is already inside these weights: do not read it again.
    module = DetectionModule(**{**hp, "model": {**hp["model"], "pretrained_checkpoint": None}})
    module.load_state_dict(blob["state_dict"], strict=False)
    return predictor_from_module(module).eval()


def _read(path: Path) -> torch.Tensor:
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as exc:
        raise DataError(path, f"cannot read image ({exc})") from None


@torch.no_grad()
def _load_any(weights: str | Path):
    """A checkpoint -> YoloPredictor; a .onnx export -> OnnxDetector (same predict_images and NMS)."""
    if is_onnx(weights):
        return OnnxDetector(weights)
    return load_predictor(weights)


def predict_files(
    predictor: YoloPredictor | OnnxDetector, files: list[Path], *, conf: float = 0.25, batch_size: int = 8
) -> list[dict[str, Any]]:
    """Per file {"boxes" xyxy in the file's pixels, "scores", "labels"}: letterbox, detect, map back."""
    size = predictor.image_size
    out: list[dict[str, Any]] = []
    for start in track(
        range(0, len(files), batch_size), "detecting", total=(len(files) + batch_size - 1) // batch_size
    ):
        chunk = files[start : start + batch_size]
        images, geometry = [], []
        for f in chunk:
            image = _read(f)
            boxed, _, scale, pad = letterbox(*make_sample(image, [], []), size)
            images.append(boxed.as_subclass(torch.Tensor))
            geometry.append((scale, pad, tuple(image.shape[-2:])))
        preds = predictor.predict_images(torch.stack(images).to(predictor.device), conf=conf)
        for p, (scale, pad, hw) in zip(preds, geometry):
            out.append(
                {
                    "boxes": unletterbox_boxes(p["boxes"].cpu(), scale, pad, hw),
                    "scores": p["scores"].cpu(),
                    "labels": p["labels"].cpu(),
                }
            )
    return out


def predict(
    checkpoint: str | Path,
    images: list[str | Path],
    out: str | Path,
    *,
    conf: float = 0.25,
    iou: float | None = None,
    draw: int = 50,
) -> Path:
    """`visionflow predict`: OUT/predictions.json (boxes per image, in its pixels) and drawn images.

    OUT must be new or empty: earlier predictions are never overwritten.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(out, "output folder is not empty; choose a new --out (earlier predictions are kept)")
    predictor = _load_any(checkpoint)
    if iou is not None:
        predictor.iou = iou
    files = image_files(list(images))
    preds = predict_files(predictor, files, conf=conf)
    names = predictor.class_names
    rows = []
    for f, p in zip(files, preds):
        rows.append(
            {
                "image": str(f),
                "detections": [
                    {
                        "box": [round(v, 2) for v in b],
                        "score": round(float(s), 4),
                        "label": int(c),
                        "class": names[int(c)],
                    }
                    for b, s, c in zip(p["boxes"].tolist(), p["scores"], p["labels"])
                ],
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(
        json.dumps({"weights": str(checkpoint), "task": "detection", "conf": conf, "images": rows}, indent=1)
    )
    drawn = draw_samples(files[:draw], None, preds[:draw], names, out / "drawn", n=draw, score_threshold=conf)
    for f, d in zip(files, drawn):  # name drawings after their images
        d.rename(d.with_name(f"{f.stem}.png"))
    return out / "predictions.json"


def evaluate_checkpoint(
    checkpoint: str | Path, prepared: str | Path, *, split: str = "val", out_dir: str | Path, batch_size: int = 8
) -> dict[str, Any]:
    """Score a detector checkpoint on a prepared split (original pixels); figures + COCO jsons in OUT_DIR."""
    return evaluate_predictor(load_predictor(checkpoint), prepared, split=split, out_dir=out_dir, batch_size=batch_size)


def evaluate_predictor(
    predictor: YoloPredictor,
    prepared: str | Path,
    *,
    split: str = "val",
    out_dir: str | Path,
    batch_size: int = 8,
    samples: int = 8,
) -> dict[str, Any]:
    """Score a predictor (e.g. the registry's champion) on a prepared split, in the images' own pixels."""
    info = read_prepared_detection(prepared)
    if info.classes != predictor.class_names:
        raise DataError(
            Path(prepared) / "manifest.json",
            f"classes {info.classes} differ from the detector's {predictor.class_names}",
        )
    ds = DetectionDataset(info, split, build_eval_transform(predictor.image_size))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    result = evaluate_loader(predictor, loader, info.classes, out_dir, rows=ds.rows, root=info.root, samples=samples)
    result["nan"] = not all(torch.isfinite(torch.as_tensor(result[k])) for k in ("map", "map_50"))
    return result
