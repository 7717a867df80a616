"""Running an ONNX export in onnxruntime with the interface of the PyTorch models, so `visionflow predict`
takes either a checkpoint or a `model.onnx` and gives the same output.

The export's `export.json` (beside the file) says what the graph is: task, input size, classes and,
for a detector, the NMS settings; NMS itself is `detection.decode.postprocess`, as for PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lightning_modules.detection.decode import NMS_KEYS, WithNms
from lightning_modules.errors import DataError


def session(path: Path):
    import onnxruntime as ort  # lazy: only when an export is run

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise DataError(path, f"onnxruntime cannot load this model: {str(exc)[:300]}") from None


def read_export(path: Path) -> dict[str, Any]:
    doc_path = path.with_name("export.json")
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            doc_path, f"an ONNX model needs the export.json written beside it by `visionflow export` ({exc})"
        ) from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != "onnx"
        or doc.get("task") not in ("classification", "detection")
    ):
        raise DataError(doc_path, "not a visionflow export description (format onnx, task classification|detection)")
    return doc


class OnnxModel:
    """An export: `task`, `image_size`, `class_names`, and the graph run on uint8 images [N,3,S,S]."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "no such ONNX file")
        self.doc = read_export(self.path)
        self.task: str = self.doc["task"]
        self.image_size = int(self.doc["input"]["shape"][-1])
        self.class_names: list[str] = list(self.doc["class_names"])
        self.device = torch.device("cpu")
        self._session = session(self.path)

    def run(self, images: torch.Tensor) -> list[torch.Tensor]:
        arrays = self._session.run(None, {self.doc["input"]["name"]: images.to(torch.uint8).cpu().numpy()})
        return [torch.from_numpy(a) for a in arrays]


class OnnxClassifier(OnnxModel):
    """uint8 images -> logits, like evaluate.Classifier."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)[0]


class OnnxDetector(WithNms, OnnxModel):
    """uint8 images -> detections, like predictor.YoloPredictor.predict_images (same NMS function)."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        # The predictor's own NMS settings (YoloPredictor.nms_settings), as exported.
        exported = self.doc.get("postprocess") or {}
        for key in NMS_KEYS:
            setattr(self, key, exported[key])

    def predict_images(self, images: torch.Tensor, conf: float | None = None) -> list[dict[str, torch.Tensor]]:
        boxes, scores = self.run(images)
        return self.postprocess(boxes, scores, images.shape[-2:], conf)


def load_onnx(path: str | Path) -> OnnxClassifier | OnnxDetector:
    doc = read_export(Path(path))
    return OnnxDetector(path) if doc["task"] == "detection" else OnnxClassifier(path)


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"
