"""A trained detector as one module: input normalisation, the network, decoding and NMS; what the
registry stores and what `visionflow predict` runs."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.detection.decode import WithNms


class YoloPredictor(WithNms, nn.Module):
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
        multi_label: bool = False,
    ):
        super().__init__()
        self.detector = detector
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.image_size, self.class_names = int(image_size), list(class_names)
        self.conf, self.iou, self.max_det, self.agnostic = conf, iou, max_det, agnostic
        self.multi_label = multi_label

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [N,3,S,S] -> (boxes xyxy [N,K,4] in input pixels, class scores [N,K,C]) before NMS:
        the part an ONNX export carries (export/onnx_export.py); NMS is `postprocess`, shared by both."""
        x = (images.float() - self.mean) / self.std
        boxes, scores = self.detector.decode(self.detector(x), x.shape[-2:])
        return boxes.float(), scores.float()

    @torch.no_grad()
    def predict_images(self, images: torch.Tensor, conf: float | None = None) -> list[dict[str, torch.Tensor]]:
        was = self.training
        self.eval()
        try:
            boxes, scores = self.raw(images)
        finally:
            self.train(was)
        return self.postprocess(boxes, scores, images.shape[-2:], conf)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.full((images.shape[0], self.max_det, 6), -1.0, device=images.device)
        for i, p in enumerate(self.predict_images(images)):
            k = len(p["scores"])
            out[i, :k] = torch.cat([p["boxes"], p["scores"][:, None], p["labels"][:, None].float()], 1)
        return out


def predictor_from_module(module) -> YoloPredictor:
    """The predictor of a DetectionModule (sharing its detector, so EMA weights swapped in are used)."""
    hp, d = module.hparams, module.detection_config
    mean, std = (module.mean / 255).flatten().tolist(), (module.std / 255).flatten().tolist()
    return YoloPredictor(
        module.detector,
        mean,
        std,
        hp.image_size,
        hp.class_names or [str(i) for i in range(hp.num_classes)],
        conf=d.conf_threshold,
        iou=d.nms_iou,
        max_det=d.max_det,
        agnostic=d.class_agnostic_nms,
        multi_label=d.multi_label,
    ).to(module.device)
