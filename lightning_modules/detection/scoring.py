"""Scoring a predictor on a letterboxing loader in the images' own pixels: COCO mAP, VOC AP, PR curves,
confusion matrix, drawn samples (used by the training job's last validation and by the evaluation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, read_image
from torchvision.utils import make_grid, save_image

from lightning_modules.detection.augment import letterbox, make_sample, unletterbox_boxes
from lightning_modules.detection.cocoio import write_coco_gt, write_coco_results
from lightning_modules.detection.image_matches import image_matches
from lightning_modules.detection.metrics import draw_samples, evaluate_detections
from lightning_modules.detection.predictor import YoloPredictor
from lightning_modules.reporting.progress import track


def _ground_truth(rows: list[dict]) -> list[dict]:
    return [
        {
            "boxes": torch.as_tensor(r.get("boxes") or [], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(r.get("labels") or [], dtype=torch.int64),
            "difficult": torch.as_tensor(r.get("difficult") or [False] * len(r.get("labels") or [])),
        }
        for r in rows
    ]


@torch.no_grad()
def evaluate_loader(
    predictor: YoloPredictor,
    loader,
    class_names,
    out_dir: str | Path,
    *,
    rows: list[dict],
    root: Path,
    samples: int = 8,
) -> dict[str, Any]:
    """Detect every image of a letterboxing loader; score against the prepared rows in original pixels."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds: dict[int, dict] = {}
    for images, targets in track(loader, "evaluating", total=len(loader)):
        for p, t in zip(predictor.predict_images(images.to(predictor.device)), targets):
            p = {k: v.cpu() for k, v in p.items()}
            p["boxes"] = unletterbox_boxes(p["boxes"], t["scale"], t["pad"], t["orig_size"])
            preds[int(t["image_id"])] = p
    ids = sorted(preds)
    pred = [preds[i] for i in ids]
    gt = _ground_truth([rows[i] for i in ids])
    result = evaluate_detections(gt, pred, class_names, out_dir=out)
    files = [root / rows[i]["image"] for i in ids]
    write_coco_gt(
        out / "gt_coco.json",
        gt,
        class_names,
        file_names=[rows[i]["image"] for i in ids],
        sizes=[(rows[i]["width"], rows[i]["height"]) for i in ids],
    )
    write_coco_results(out / "pred_coco.json", pred)
    drawn = draw_samples(files, gt, pred, class_names, out / "samples", n=samples)
    grid = sample_grid(drawn, out / "detections.png")
    result["figure_paths"] = [result["figures"]["pr_curves"], result["figures"]["confusion_matrix"], str(grid)]
    result["n"] = len(ids)
    (out / "metrics.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "confusion_matrix"}, indent=1)
    )
    result["matches"] = image_matches(gt, pred, len(class_names))  # per image: for the promotion's bootstrap
    return result


def sample_grid(paths: list[Path], out: Path, cell: int = 256) -> Path:
    """One picture of the drawn samples (each letterboxed to `cell` px), 4 per row."""
    tiles = [letterbox(*make_sample(read_image(str(p), mode=ImageReadMode.RGB), [], []), cell)[0] for p in paths]
    if not tiles:
        tiles = [torch.full((3, cell, cell), 114, dtype=torch.uint8)]
    save_image(make_grid([t.as_subclass(torch.Tensor).float() / 255 for t in tiles], nrow=4, padding=4), out)
    return out
