"""Shared decode of raw head outputs to boxes (xyxy pixels), confidence filtering and NMS.

Parameterisations (the losses use the same functions, so train and predict agree):
- v1: per box sigmoid (x, y) offset in its cell, sigmoid (sqrt w, sqrt h) as fractions of the image,
  sigmoid confidence; softmax class probabilities per cell; score = conf * P(class).
- v2/v3: b_xy = (sigmoid(t_xy) + cell) * stride, b_wh = anchor * exp(t_wh); score = sigmoid(obj) *
  softmax(classes) for v2, * sigmoid(classes) for v3 (independent logistic classes).
- v3 with `grid_sensitive` (YOLOv4's "eliminate grid sensitivity", YOLOv5's head): b_xy =
  (2 sigmoid(t_xy) - 0.5 + cell) * stride, b_wh = anchor * (2 sigmoid(t_wh))^2: a cell can reach
  a neighbour's centre (so an object can be assigned to several cells) and sizes are bounded (0-4x).
"""

from __future__ import annotations

import torch
from torchvision import ops

from lightning_modules.detection.boxes import cxcywh_to_xyxy


def image_hw(size: int | tuple[int, int] | torch.Size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[-2]), int(size[-1]))


def _cells(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    gy, gx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return gx, gy


def anchor_boxes(raw: torch.Tensor, anchors: torch.Tensor, size, *, grid_sensitive: bool = False) -> torch.Tensor:
    """v2/v3 boxes: raw [N, A, H, W, 5+C], anchors [A, 2] pixels -> cxcywh pixels [N, A, H, W, 4]."""
    ih, iw = image_hw(size)
    h, w = raw.shape[2:4]
    gx, gy = _cells(h, w, raw.device)
    stride = raw.new_tensor([iw / w, ih / h])
    anchors = anchors.to(raw)[None, :, None, None, :]
    if grid_sensitive:
        xy = (raw[..., :2].sigmoid() * 2 - 0.5 + torch.stack([gx, gy], -1)) * stride
        wh = anchors * (raw[..., 2:4].sigmoid() * 2) ** 2
    else:
        xy = (raw[..., :2].sigmoid() + torch.stack([gx, gy], -1)) * stride
        wh = anchors * raw[..., 2:4].clamp(max=10).exp()  # clamp: no inf early
    return torch.cat([xy, wh], -1)


def v1_boxes(raw: torch.Tensor, boxes: int, size) -> torch.Tensor:
    """v1 boxes: raw [N, S, S, B*5+C] -> cxcywh pixels [N, S, S, B, 4]."""
    ih, iw = image_hw(size)
    n, s = raw.shape[:2]
    p = raw[..., : boxes * 5].view(n, s, s, boxes, 5).sigmoid()
    gx, gy = _cells(s, s, raw.device)
    cx = (p[..., 0] + gx[..., None]) * (iw / s)
    cy = (p[..., 1] + gy[..., None]) * (ih / s)
    return torch.stack([cx, cy, p[..., 2] ** 2 * iw, p[..., 3] ** 2 * ih], -1)


def decode_v1(raw: torch.Tensor, size, *, boxes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """-> boxes xyxy [N, S*S*B, 4], class scores [N, S*S*B, C]."""
    n = raw.shape[0]
    b = cxcywh_to_xyxy(v1_boxes(raw, boxes, size)).reshape(n, -1, 4)
    conf = raw[..., : boxes * 5].reshape(*raw.shape[:3], boxes, 5)[..., 4].sigmoid()
    cls = raw[..., boxes * 5 :].softmax(-1)
    scores = conf[..., None] * cls[..., None, :]  # [N, S, S, B, C]
    return b, scores.reshape(n, -1, cls.shape[-1])


def decode_v2(raw: torch.Tensor, anchors: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    n = raw.shape[0]
    b = cxcywh_to_xyxy(anchor_boxes(raw, anchors, size)).reshape(n, -1, 4)
    scores = raw[..., 4:5].sigmoid() * raw[..., 5:].softmax(-1)
    return b, scores.reshape(n, -1, scores.shape[-1])


def decode_v3(
    raw: list[torch.Tensor], anchors: torch.Tensor, size, *, grid_sensitive: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """anchors [3 * scales, 2], grouped finest scale first (as `raw`)."""
    na = raw[0].shape[1]
    all_b, all_s = [], []
    for i, r in enumerate(raw):
        n = r.shape[0]
        anc = anchors[i * na : (i + 1) * na]
        all_b.append(cxcywh_to_xyxy(anchor_boxes(r, anc, size, grid_sensitive=grid_sensitive)).reshape(n, -1, 4))
        all_s.append((r[..., 4:5].sigmoid() * r[..., 5:].sigmoid()).reshape(n, -1, r.shape[-1] - 5))
    return torch.cat(all_b, 1), torch.cat(all_s, 1)


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    size,
    *,
    conf: float = 0.25,
    iou: float = 0.45,
    agnostic: bool = False,
    max_det: int = 100,
    multi_label: bool = False,
    max_candidates: int = 10_000,
) -> list[dict[str, torch.Tensor]]:
    """boxes [N, K, 4] xyxy, scores [N, K, C] -> per image {"boxes", "scores", "labels"} after NMS.

    Each box keeps its best class, or with `multi_label` every class scoring above `conf` (YOLOv5/v8
    validation: a box whose class is uncertain still counts for the right class, at its lower score).
    At most `max_candidates` top-scoring candidates enter NMS, per class (`batched_nms`) unless `agnostic`.
    """
    ih, iw = image_hw(size)
    out = []
    for b, s in zip(boxes, scores):
        if multi_label:
            i, labels = (s > conf).nonzero(as_tuple=True)
            b, best = b[i], s[i, labels]
        else:
            best, labels = s.max(-1)
            keep = best > conf
            b, best, labels = b[keep], best[keep], labels[keep]
        if len(best) > max_candidates:
            top = best.topk(max_candidates).indices
            b, best, labels = b[top], best[top], labels[top]
        b = torch.stack([b[:, 0].clamp(0, iw), b[:, 1].clamp(0, ih), b[:, 2].clamp(0, iw), b[:, 3].clamp(0, ih)], -1)
        keep = ops.batched_nms(b, best, torch.zeros_like(labels) if agnostic else labels, iou)[:max_det]
        out.append({"boxes": b[keep], "scores": best[keep], "labels": labels[keep]})
    return out


NMS_KEYS = ("conf", "iou", "max_det", "agnostic", "multi_label")


class WithNms:
    """A detector's NMS settings (attributes) and `postprocess` applied with them: shared by the PyTorch
    predictor and an ONNX export run in onnxruntime (export/runtime.py), so both give the same detections."""

    conf: float
    iou: float
    max_det: int
    agnostic: bool
    multi_label: bool

    def nms_settings(self) -> dict:
        return {k: getattr(self, k) for k in NMS_KEYS}

    def postprocess(self, boxes, scores, size, conf: float | None = None) -> list[dict[str, torch.Tensor]]:
        settings = self.nms_settings()
        return postprocess(boxes, scores, size, **{**settings, "conf": settings["conf"] if conf is None else conf})
