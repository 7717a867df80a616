"""YOLO v1/v2/v3 detectors on any registry backbone: `build_detector`, `DETECTORS`, `load_backbone`.

A detector is `backbone` (from `build_model`, so a `pretrained_backbone` checkpoint's `body.*`
weights load into it) + a head + its loss. Anchors are (w, h) pixels at `image_size`; at another
input size (multi-scale training) they scale with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_modules.config import DetectionConfig
from lightning_modules.detection import decode as dec
from lightning_modules.detection.heads import YoloV1Head, YoloV2Head, YoloV3Head
from lightning_modules.detection.losses import V3Weights, YoloV1Loss, YoloV2Loss, YoloV3Loss
from lightning_modules.errors import ConfigError, DataError
from lightning_modules.models import build_model


class Detector(nn.Module):
    """forward(images) -> raw head outputs; loss(raw, targets, image_size); predict(images, conf, iou)."""

    def __init__(
        self,
        version: str,
        backbone: nn.Module,
        head: nn.Module,
        criterion: nn.Module,
        num_classes: int,
        image_size: int,
        anchors: torch.Tensor | None = None,
    ):
        super().__init__()
        self.version, self.num_classes, self.image_size = version, num_classes, int(image_size)
        self.backbone, self.head, self.criterion = backbone, head, criterion
        self.register_buffer("anchors", torch.zeros(0, 2) if anchors is None else anchors.float())

    def _anchors_at(self, size) -> torch.Tensor:
        ih, iw = dec.image_hw(size)
        return self.anchors * self.anchors.new_tensor([iw, ih]) / self.image_size

    def forward(self, images: torch.Tensor):
        if self.version == "yolov1":
            # the yolov1 backbone's body ends at stride 64 (7x7 at 448): use all of it
            if self.backbone.name == "yolov1":
                return self.head(self.backbone.body(images))
            return self.head(self.backbone.feature_maps(images)[32])
        return self.head(self.backbone.feature_maps(images))

    def loss(self, raw, targets: list[dict], image_size) -> tuple[torch.Tensor, dict[str, float]]:
        if self.version == "yolov1":
            return self.criterion(raw, targets, image_size)
        return self.criterion(raw, targets, image_size, anchors=self._anchors_at(image_size))

    def decode(self, raw, image_size) -> tuple[torch.Tensor, torch.Tensor]:
        """-> boxes xyxy pixels [N, K, 4], class scores [N, K, C]."""
        if self.version == "yolov1":
            return dec.decode_v1(raw, image_size, boxes=self.head.boxes)
        if self.version == "yolov2":
            return dec.decode_v2(raw, self._anchors_at(image_size), image_size)
        grid_sensitive = self.criterion.grid_sensitive
        return dec.decode_v3(raw, self._anchors_at(image_size), image_size, grid_sensitive=grid_sensitive)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, conf: float = 0.25, iou: float = 0.45, *, agnostic: bool = False, max_det: int = 100
    ) -> list[dict[str, torch.Tensor]]:
        """Per image {"boxes" xyxy pixels, "scores", "labels"} after confidence filtering and NMS."""
        was = self.training
        self.eval()
        try:
            boxes, scores = self.decode(self(images), images.shape[-2:])
        finally:
            self.train(was)
        return dec.postprocess(boxes, scores, images.shape[-2:], conf=conf, iou=iou, agnostic=agnostic, max_det=max_det)


def _hidden(width: float, base: int) -> int:
    return max(16, int(round(base * width)))


def _backbone(name: str, width: float, small_input: bool, stem_stride: int | None) -> nn.Module:
    bb = build_model(name, num_classes=1, width=width, small_input=small_input, stem_stride=stem_stride)
    # A detector reads the body's feature maps only: the classifier would be parameters that never
    # get a gradient (DDP refuses those) and weights no checkpoint could fill.
    bb.head = nn.Identity()
    return bb


def _yolov1(
    backbone_name,
    num_classes,
    anchors,
    *,
    width,
    small_input,
    stem_stride,
    image_size,
    neck_width=1.0,
    grid=7,
    boxes=2,
    fc=True,
    **loss_kw,
):
    bb = _backbone(backbone_name, width, small_input, stem_stride)
    cin = bb.num_features if bb.name == "yolov1" else bb.feature_channels[32]
    head = YoloV1Head(
        cin,
        num_classes,
        grid=grid,
        boxes=boxes,
        hidden=_hidden(width * neck_width, 1024 if fc else 512),
        fc=fc,
        dropout=0.5 if fc else 0.0,
    )
    return Detector("yolov1", bb, head, YoloV1Loss(num_classes, boxes=boxes, **loss_kw), num_classes, image_size)


def _check_anchors(anchors, count: int, version: str) -> torch.Tensor:
    if anchors is None:
        raise ConfigError(f"{version}: anchors are required ({count} (w, h) pairs in pixels, from the data stage)")
    a = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)
    if len(a) != count or (a <= 0).any():
        raise ConfigError(f"{version}: expected {count} positive (w, h) anchors, got {a.tolist()}")
    return a


def _yolov2(
    backbone_name, num_classes, anchors, *, width, small_input, stem_stride, image_size, neck_width=1.0, **loss_kw
):
    a = _check_anchors(anchors, 5, "yolov2")
    bb = _backbone(backbone_name, width, small_input, stem_stride)
    ch = bb.feature_channels
    head = YoloV2Head(
        ch[16],
        ch[32],
        num_classes,
        anchors=len(a),
        hidden=_hidden(width * neck_width, 1024),
        passthrough=_hidden(width, 64),
    )
    _prior_obj(head.out, len(a), num_classes)
    return Detector("yolov2", bb, head, YoloV2Loss(num_classes, a, **loss_kw), num_classes, image_size, a)


def _yolov3(
    backbone_name, num_classes, anchors, *, width, small_input, stem_stride, image_size, neck_width=1.0, **loss_kw
):
    a = _check_anchors(anchors, 9, "yolov3")
    a = a[a.prod(1).argsort()]  # smallest three go to stride 8
    bb = _backbone(backbone_name, width, small_input, stem_stride)
    head = YoloV3Head(bb.feature_channels, num_classes, hidden=_hidden(width * neck_width, 256))
    for out in (head.out8, head.out16, head.out32):
        _prior_obj(out, 3, num_classes)
    return Detector("yolov3", bb, head, YoloV3Loss(num_classes, a, **loss_kw), num_classes, image_size, a)


def _prior_obj(conv: nn.Conv2d, anchors: int, num_classes: int, prior: float = 0.01) -> None:
    """Start objectness near `prior` so the many empty cells don't swamp early training (RetinaNet/YOLOv5)."""
    with torch.no_grad():
        conv.bias.view(anchors, 5 + num_classes)[:, 4].fill_(math.log(prior / (1 - prior)))


DETECTORS: dict[str, Callable[..., Detector]] = {"yolov1": _yolov1, "yolov2": _yolov2, "yolov3": _yolov3}


def build_detector(
    version: str,
    backbone_name: str,
    num_classes: int,
    anchors: Sequence | torch.Tensor | None = None,
    *,
    width: float = 1.0,
    small_input: bool = False,
    stem_stride: int | None = None,
    image_size: int = 416,
    **options,
) -> Detector:
    """Build a YOLO detector; `options` go to the head (neck_width; v1: grid, boxes, fc) or the loss."""
    try:
        builder = DETECTORS[version]
    except KeyError:
        raise ConfigError(f"detector {version!r} is unknown; choose one of: {', '.join(DETECTORS)}") from None
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes: {num_classes!r} must be a positive integer")
    return builder(
        backbone_name,
        num_classes,
        anchors,
        width=width,
        small_input=small_input,
        stem_stride=stem_stride,
        image_size=image_size,
        **options,
    )


def config_options(d: DetectionConfig) -> dict[str, Any]:
    """build_detector's head and loss options for the version, from the job's detection config."""
    options: dict[str, Any] = {"neck_width": d.neck_width}
    if d.version == "yolov1":
        options.update(grid=d.grid, boxes=d.boxes)
    elif d.version == "yolov3":
        box, obj, cls = d.loss_weights
        options.update(
            box_loss=d.box_loss,
            assign=d.assign,
            anchor_t=d.anchor_t,
            ignore_iou=d.ignore_iou,
            obj_target=d.obj_target,
            obj_norm=d.obj_norm,
            label_smoothing=d.label_smoothing,
            weights=V3Weights(box=box, obj=obj, cls=cls),
        )
    return options


def load_backbone(detector: Detector, checkpoint: str | Path) -> dict[str, list[str]]:
    """Load a `pretrained_backbone` checkpoint (Lightning or state dict) into the detector's backbone.

    Uses `classification.load_pretrained`: every backbone weight except the classifier must fit.
    """
    from lightning_modules.classification.module import load_pretrained  # lazy: Lightning; preflight loads this module

    if not Path(checkpoint).is_file():
        raise DataError(Path(checkpoint), "pretrained backbone checkpoint not found")
    return load_pretrained(detector.backbone, checkpoint)
