"""Box formats and overlaps: xyxy <-> xywh / cxcywh, IoU-family losses, (w, h) IoU for anchor matching.

Thin wrappers over torchvision.ops so the detectors share one vocabulary.
"""

from __future__ import annotations

import torch
from torchvision import ops


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    return ops.box_convert(b, "xyxy", "cxcywh")


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return ops.box_convert(b, "cxcywh", "xyxy")


def xyxy_to_xywh(b: torch.Tensor) -> torch.Tensor:
    """xyxy -> COCO's (x, y, w, h) with (x, y) the top-left corner."""
    return ops.box_convert(b, "xyxy", "xywh")


def xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return ops.box_convert(b, "xywh", "xyxy")


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU [N, M] of xyxy boxes."""
    return ops.box_iou(a, b)


def paired_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU [...] of matching xyxy boxes a[..., 4], b[..., 4] (differentiable)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """1 - GIoU of matching xyxy boxes (0 for identical boxes)."""
    return ops.generalized_box_iou_loss(pred, target, reduction=reduction)


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """1 - CIoU of matching xyxy boxes (0 for identical boxes)."""
    return ops.complete_box_iou_loss(pred, target, reduction=reduction)


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU [N, K] of sizes wh1 [N, 2] and wh2 [K, 2] as if the boxes shared a centre (anchor matching)."""
    inter = torch.minimum(wh1[:, None, :], wh2[None, :, :]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None, :] - inter + 1e-9)
