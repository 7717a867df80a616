"""`visionflow predict` with a classifier (a checkpoint or its ONNX export): the top classes of each image.

Images are read as prep reads them (RGB, shorter side to the model's input size, centre crop), so a
prediction sees what the model saw in training and evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lightning_modules.data.images import BadImage, load_chw
from lightning_modules.errors import DataError
from lightning_modules.export.runtime import OnnxClassifier, is_onnx
from lightning_modules.reporting.progress import track


def load_any_classifier(weights: str | Path):
    """A checkpoint -> evaluate.Classifier; a .onnx export -> OnnxClassifier (same call: uint8 -> logits)."""
    if is_onnx(weights):
        return OnnxClassifier(weights)
    from lightning_modules.classification.evaluate import load_classifier  # lazy: the model registry

    model = load_classifier(weights)
    if not model.image_size:
        raise DataError(Path(weights), "this checkpoint predates recorded input sizes: export it or retrain")
    return model


@torch.no_grad()
def predict_classes(
    weights: str | Path, files: list[Path], out: str | Path, *, top_k: int = 5, batch_size: int = 32
) -> Path:
    """OUT/predictions.json: per image its top-k classes with probabilities. OUT must be new or empty."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(out, "output folder is not empty; choose a new --out (earlier predictions are kept)")
    model = load_any_classifier(weights)
    names = list(model.class_names or [])
    size = int(model.image_size)
    rows = []
    for start in track(range(0, len(files), batch_size), "classifying", total=-(-len(files) // batch_size)):
        chunk = files[start : start + batch_size]
        probs = torch.softmax(model(torch.stack([_read(f, size) for f in chunk])).float(), dim=1)
        top = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for f, p, i in zip(chunk, top.values.tolist(), top.indices.tolist()):
            ranked = [
                {"label": c, "class": names[c] if c < len(names) else str(c), "prob": round(v, 5)} for v, c in zip(p, i)
            ]
            rows.append({"image": str(f), "top": ranked})
    out.mkdir(parents=True, exist_ok=True)
    doc = {"weights": str(weights), "task": "classification", "image_size": size, "images": rows}
    (out / "predictions.json").write_text(json.dumps(doc, indent=1))
    return out / "predictions.json"


def _read(path: Path, size: int) -> torch.Tensor:
    try:
        return torch.from_numpy(load_chw(path, size))
    except BadImage as exc:
        raise DataError(path, f"cannot read image ({exc})") from None
