"""Evaluating and using a trained detector: load a checkpoint, score a prepared split in the images'
own pixels (COCO mAP, VOC AP, PR curves, confusion matrix, drawn samples), predict on image files
(`visionflow predict`, `visionflow evaluate` with a detector checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_modules.errors import DataError
from lightning_modules.progress import track

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class YoloPredictor(nn.Module):
    """A trained detector with its input normalisation and decoding: what the registry stores.

    forward(uint8 images [N,3,S,S]) -> [N, max_det, 6] rows (x1, y1, x2, y2, score, label) in the
    input's pixels, padded with -1 (one tensor, so MLflow can record the signature);
    `predict_images` gives the same as a list of {"boxes", "scores", "labels"}.
    """

    def __init__(
        self,
        detector: nn.Module,
        mean,
        std,
        image_size: int,
        class_names: list[str],
        *,
        conf: float = 0.001,
        iou: float = 0.6,
        max_det: int = 100,
        agnostic: bool = False,
    ):
        super().__init__()
        self.detector = detector
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.image_size, self.class_names = int(image_size), list(class_names)
        self.conf, self.iou, self.max_det, self.agnostic = conf, iou, max_det, agnostic

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.no_grad()
    def predict_images(self, images: torch.Tensor, conf: float | None = None) -> list[dict[str, torch.Tensor]]:
        from lightning_modules.detection.decode import postprocess

        was = self.training
        self.eval()
        try:
            x = (images.float() - self.mean) / self.std
            boxes, scores = self.detector.decode(self.detector(x), x.shape[-2:])
        finally:
            self.train(was)
        return postprocess(
            boxes.float(),
            scores.float(),
            x.shape[-2:],
            conf=self.conf if conf is None else conf,
            iou=self.iou,
            agnostic=self.agnostic,
            max_det=self.max_det,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.full((images.shape[0], self.max_det, 6), -1.0, device=images.device)
        for i, p in enumerate(self.predict_images(images)):
            k = len(p["scores"])
            out[i, :k] = torch.cat([p["boxes"], p["scores"][:, None], p["labels"][:, None].float()], 1)
        return out


def predictor_from_module(module) -> YoloPredictor:
    """The predictor of a DetectionModule (sharing its detector, so EMA weights swapped in are used)."""
    hp, d = module.hparams, module.hparams.detection
    mean, std = (module.mean / 255).flatten().tolist(), (module.std / 255).flatten().tolist()
    return YoloPredictor(
        module.detector,
        mean,
        std,
        hp.image_size,
        hp.class_names or [str(i) for i in range(hp.num_classes)],
        conf=d.get("conf_threshold", 0.001),
        iou=d.get("nms_iou", 0.6),
        max_det=d.get("max_det", 100),
        agnostic=d.get("class_agnostic_nms", False),
    ).to(module.device)


def load_predictor(checkpoint: str | Path) -> YoloPredictor:
    """The predictor of one of our detector checkpoints (EMA weights when training used EMA)."""
    from lightning_modules.checkpoints import load_checkpoint
    from lightning_modules.detection.module import DetectionModule

    path = Path(checkpoint)
    blob = load_checkpoint(path, "detector checkpoint")
    hp = blob.get("hyper_parameters")
    if not isinstance(hp, dict) or "detection" not in hp or not isinstance(blob.get("state_dict"), dict):
        raise DataError(path, "not a visionflow detector checkpoint (no detection hyper-parameters)")
    # The backbone's pretraining checkpoint is already inside these weights: do not read it again.
    module = DetectionModule(**{**hp, "model": {**hp["model"], "pretrained_checkpoint": None}})
    module.load_state_dict(blob["state_dict"], strict=False)
    return predictor_from_module(module).eval()


def _images_of(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(p, "no such image file or folder")
    if not files:
        raise DataError(Path(paths[0]) if paths else Path("."), "no images found")
    return files


def _read(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as exc:
        raise DataError(path, f"cannot read image ({exc})") from None


@torch.no_grad()
def predict_files(
    predictor: YoloPredictor, files: list[Path], *, conf: float = 0.25, batch_size: int = 8
) -> list[dict[str, Any]]:
    """Per file {"boxes" xyxy in the file's pixels, "scores", "labels"}: letterbox, detect, map back."""
    from lightning_modules.detection.augment import letterbox, make_sample, unletterbox_boxes

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
    from lightning_modules.detection.metrics import draw_samples

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(out, "output folder is not empty; choose a new --out (earlier predictions are kept)")
    predictor = load_predictor(checkpoint)
    if iou is not None:
        predictor.iou = iou
    files = _images_of(list(images))
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
        json.dumps({"checkpoint": str(checkpoint), "conf": conf, "images": rows}, indent=1)
    )
    drawn = draw_samples(files[:draw], None, preds[:draw], names, out / "drawn", n=draw, score_threshold=conf)
    for f, d in zip(files, drawn):  # name drawings after their images
        d.rename(d.with_name(f"{f.stem}.png"))
    return out / "predictions.json"


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
    from lightning_modules.detection.augment import unletterbox_boxes
    from lightning_modules.detection.cocoio import write_coco_gt, write_coco_results
    from lightning_modules.detection.metrics import draw_samples, evaluate_detections

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
    return result


def sample_grid(paths: list[Path], out: Path, cell: int = 256) -> Path:
    """One picture of the drawn samples (each letterboxed to `cell` px), 4 per row."""
    from torchvision.io import ImageReadMode, read_image
    from torchvision.utils import make_grid, save_image

    from lightning_modules.detection.augment import letterbox, make_sample

    tiles = [letterbox(*make_sample(read_image(str(p), mode=ImageReadMode.RGB), [], []), cell)[0] for p in paths]
    if not tiles:
        tiles = [torch.full((3, cell, cell), 114, dtype=torch.uint8)]
    save_image(make_grid([t.as_subclass(torch.Tensor).float() / 255 for t in tiles], nrow=4, padding=4), out)
    return out


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
    from lightning_modules.detection.augment import build_eval_transform
    from lightning_modules.detection.data import DetectionDataset, collate, read_prepared_detection

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
