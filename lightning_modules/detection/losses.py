"""YOLO v1/v2/v3 losses. Each is called as `loss(raw, targets, image_size) -> (total, parts)`.

targets: one dict per image {"boxes": xyxy pixels [G, 4], "labels": [G]}; image_size: int or (h, w).
`total` is summed over the batch's parts and divided by the number of images (v1, v2 as in Darknet)
or built from per-term means (v3); `parts` holds detached floats for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.detection.boxes import box_iou, ciou_loss, cxcywh_to_xyxy, giou_loss, paired_iou, wh_iou
from lightning_modules.detection.decode import anchor_boxes, image_hw, v1_boxes
from lightning_modules.errors import ConfigError


def _gt(t: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    return t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4), t["labels"].to(device).long().reshape(-1)


def _cxcywh(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([(b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]).clamp(min=1e-3)], 1)


def _parts(**terms: torch.Tensor) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


class YoloV1Loss(nn.Module):
    """The paper's sum-squared loss: one responsible box per object (highest IoU among the cell's B).

    coord: lambda_coord * [(x, y) offsets + (sqrt w, sqrt h)]; obj: (conf - IoU)^2 for responsible
    boxes; noobj: lambda_noobj * conf^2 for all others; class: squared error of the cell's class
    probabilities in cells holding an object centre.
    """

    def __init__(self, num_classes: int, *, boxes: int = 2, lambda_coord: float = 5.0, lambda_noobj: float = 0.5):
        super().__init__()
        self.c, self.b, self.lambda_coord, self.lambda_noobj = num_classes, boxes, lambda_coord, lambda_noobj

    def forward(self, raw: torch.Tensor, targets: list[dict], image_size) -> tuple[torch.Tensor, dict]:
        ih, iw = image_hw(image_size)
        n, s = raw.shape[:2]
        p = raw[..., : self.b * 5].view(n, s, s, self.b, 5)
        pred = v1_boxes(raw, self.b, image_size)  # cxcywh pixels [n, s, s, B, 4]
        has = torch.zeros(n, s, s, dtype=torch.bool, device=raw.device)
        tbox = raw.new_zeros(n, s, s, 4)
        tcls = raw.new_zeros(n, s, s, self.c)
        for i, t in enumerate(targets):
            boxes, labels = _gt(t, raw.device)
            if len(boxes) == 0:
                continue
            c = _cxcywh(boxes)
            gx = (c[:, 0] / iw * s).long().clamp(0, s - 1)
            gy = (c[:, 1] / ih * s).long().clamp(0, s - 1)
            has[i, gy, gx] = True  # one object per cell, as in the paper: the last one wins
            tbox[i, gy, gx] = c
            tcls[i, gy, gx] = F.one_hot(labels, self.c).float()
        iou = paired_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tbox)[..., None, :].expand_as(pred)).detach()
        resp = F.one_hot(iou.argmax(-1), self.b).bool() & has[..., None]
        gx = torch.arange(s, device=raw.device).view(1, 1, s, 1)
        gy = torch.arange(s, device=raw.device).view(1, s, 1, 1)
        txy = torch.stack([tbox[..., 0:1] / iw * s - gx, tbox[..., 1:2] / ih * s - gy], -1)  # [n,s,s,1,2]
        twh = torch.stack([(tbox[..., 2:3] / iw).sqrt(), (tbox[..., 3:4] / ih).sqrt()], -1)
        sig = p.sigmoid()
        coord = ((sig[..., :2] - txy) ** 2 + (sig[..., 2:4] - twh) ** 2).sum(-1)
        coord = self.lambda_coord * coord[resp].sum()
        conf = sig[..., 4]
        obj = ((conf - iou) ** 2)[resp].sum()
        noobj = self.lambda_noobj * (conf[~resp] ** 2).sum()
        cls = ((raw[..., self.b * 5 :].softmax(-1) - tcls) ** 2).sum(-1)[has].sum()
        total = (coord + obj + noobj + cls) / n
        return total, _parts(coord=coord / n, obj=obj / n, noobj=noobj / n, cls=cls / n)


class YoloV2Loss(nn.Module):
    """Anchor by best (w, h) IoU, sigmoid offsets, exp anchor scaling, softmax classes.

    coord: (2 - w*h/area) weighted squared error on (sigmoid tx, sigmoid ty, tw, th); obj:
    (sigmoid(obj) - target)^2 with target the IoU ("iou") or 1 ("one"); noobj: lambda_noobj *
    sigmoid(obj)^2 for predictions whose best IoU with every ground truth is below `ignore_iou`.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: torch.Tensor,
        *,
        lambda_coord: float = 1.0,
        lambda_obj: float = 5.0,
        lambda_noobj: float = 1.0,
        lambda_cls: float = 1.0,
        ignore_iou: float = 0.6,
        obj_target: str = "iou",
    ):
        super().__init__()
        if obj_target not in ("iou", "one"):
            raise ConfigError(f"obj_target: {obj_target!r}; choose 'iou' or 'one'")
        self.c = num_classes
        self.register_buffer("anchors", torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2))
        self.lambda_coord, self.lambda_obj, self.lambda_noobj, self.lambda_cls = (
            lambda_coord,
            lambda_obj,
            lambda_noobj,
            lambda_cls,
        )
        self.ignore_iou, self.obj_target = ignore_iou, obj_target

    def forward(self, raw: torch.Tensor, targets: list[dict], image_size, anchors: torch.Tensor | None = None):
        anchors = self.anchors if anchors is None else anchors
        ih, iw = image_hw(image_size)
        n, a, h, w = raw.shape[:4]
        pred = cxcywh_to_xyxy(anchor_boxes(raw, anchors, image_size))  # [n, a, h, w, 4]
        pos = torch.zeros(n, a, h, w, dtype=torch.bool, device=raw.device)
        noobj = torch.ones_like(pos)
        t = raw.new_zeros(n, a, h, w, 4)  # sigmoid tx, ty targets, tw, th targets
        tscale = raw.new_zeros(n, a, h, w)
        tlab = torch.zeros(n, a, h, w, dtype=torch.long, device=raw.device)
        tbox = raw.new_zeros(n, a, h, w, 4)
        for i, tg in enumerate(targets):
            boxes, labels = _gt(tg, raw.device)
            if len(boxes) == 0:
                continue
            noobj[i] = box_iou(pred[i].detach().reshape(-1, 4), boxes).max(1).values.view(a, h, w) < self.ignore_iou
            c = _cxcywh(boxes)
            k = wh_iou(c[:, 2:], anchors).argmax(1)
            fx, fy = c[:, 0] / iw * w, c[:, 1] / ih * h
            gx, gy = fx.long().clamp(0, w - 1), fy.long().clamp(0, h - 1)
            pos[i, k, gy, gx] = True
            t[i, k, gy, gx] = torch.stack(
                [fx - gx, fy - gy, (c[:, 2] / anchors[k, 0]).log(), (c[:, 3] / anchors[k, 1]).log()], 1
            )
            tscale[i, k, gy, gx] = 2 - c[:, 2] * c[:, 3] / (iw * ih)
            tlab[i, k, gy, gx] = labels
            tbox[i, k, gy, gx] = boxes
        noobj &= ~pos
        rp = raw[pos]
        coord = (
            self.lambda_coord
            * (tscale[pos][:, None] * (torch.cat([rp[:, :2].sigmoid(), rp[:, 2:4]], 1) - t[pos]) ** 2).sum()
        )
        conf = raw[..., 4].sigmoid()
        target = paired_iou(pred[pos], tbox[pos]).detach() if self.obj_target == "iou" else torch.ones_like(conf[pos])
        obj = self.lambda_obj * ((conf[pos] - target) ** 2).sum()
        no = self.lambda_noobj * (conf[noobj] ** 2).sum()
        cls = self.lambda_cls * F.cross_entropy(rp[:, 5:], tlab[pos], reduction="sum")
        total = (coord + obj + no + cls) / n
        return total, _parts(coord=coord / n, obj=obj / n, noobj=no / n, cls=cls / n)


@dataclass
class V3Weights:
    box: float = 5.0
    obj: float = 1.0
    cls: float = 1.0
    balance: tuple[float, float, float] = (4.0, 1.0, 0.4)  # objectness weight per scale, finest first (YOLOv5)


class YoloV3Loss(nn.Module):
    """Objects assigned to anchors and cells, then box, objectness and class terms.

    assign "v3": the best anchor across the three scales (plus every anchor above `match_iou` when
    set), in the cell holding the object's centre. "v5" (YOLOv5, with grid-sensitive decoding):
    every anchor whose width and height are within a factor `anchor_t` of the object's, in the
    centre cell and the two neighbouring cells nearest the centre: up to 27 positives per object
    instead of 1, which is what lets a small set teach a detector in minutes.

    box: mean over positives of 1 - GIoU ("giou"), 1 - CIoU ("ciou") or squared error of the raw
    offsets ("mse", v3 only); obj: BCE against 1 (or the IoU, `obj_target="iou"`) at positives and 0
    elsewhere, except predictions overlapping a ground truth by more than `ignore_iou` (the v3
    paper's 0.5; None: no ignoring); cls: BCE per class at positives, targets smoothed by
    `label_smoothing` (1 - eps/2 and eps/2, as YOLOv5).

    obj_norm "positives" (default): the objectness BCE is summed over every cell of every scale and
    divided by the number of positives, as Darknet sums it per image and YOLOX normalises it; each
    object then pulls as hard as it does on a coarse grid even when fine grids hold thousands of
    cells. "cells": YOLOv5's mean per scale with `balance` weights.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: torch.Tensor,
        *,
        box_loss: str = "ciou",
        assign: str = "v3",
        anchor_t: float = 4.0,
        match_iou: float | None = None,
        ignore_iou: float | None = 0.5,
        obj_target: str = "one",
        obj_norm: str = "positives",
        label_smoothing: float = 0.0,
        weights: V3Weights | None = None,
    ):
        super().__init__()
        if box_loss not in ("giou", "ciou", "mse") or (assign == "v5" and box_loss == "mse"):
            raise ConfigError(f"box_loss: {box_loss!r}; choose giou, ciou or (with assign v3) mse")
        if assign not in ("v3", "v5"):
            raise ConfigError(f"assign: {assign!r}; choose 'v3' or 'v5'")
        if obj_norm not in ("positives", "cells"):
            raise ConfigError(f"obj_norm: {obj_norm!r}; choose 'positives' or 'cells'")
        if obj_target not in ("iou", "one"):
            raise ConfigError(f"obj_target: {obj_target!r}; choose 'iou' or 'one'")
        self.c, self.box_loss, self.assign, self.anchor_t = num_classes, box_loss, assign, anchor_t
        self.match_iou, self.ignore_iou, self.obj_target, self.obj_norm = match_iou, ignore_iou, obj_target, obj_norm
        self.label_smoothing = label_smoothing
        self.w = weights or V3Weights()
        self.register_buffer("anchors", torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2))

    @property
    def grid_sensitive(self) -> bool:
        return self.assign == "v5"

    def _match(self, c: torch.Tensor, anchors: torch.Tensor, s: int, na: int, h: int, w: int, ih: int, iw: int):
        """-> (object index g, anchor k within the scale, cell gx, gy) of every positive at scale `s`."""
        fx, fy = c[:, 0] / iw * w, c[:, 1] / ih * h
        if self.assign == "v3":
            ious = wh_iou(c[:, 2:], anchors)  # [G, 9]: best anchor across all scales
            match = F.one_hot(ious.argmax(1), len(anchors)).bool()
            if self.match_iou is not None:
                match |= ious > self.match_iou
            g, k = match[:, s * na : (s + 1) * na].nonzero(as_tuple=True)
            return g, k, fx[g].long().clamp(0, w - 1), fy[g].long().clamp(0, h - 1)
        ratio = c[:, None, 2:] / anchors[None, s * na : (s + 1) * na]  # [G, na, 2]
        g, k = (torch.max(ratio, 1 / ratio).amax(-1) < self.anchor_t).nonzero(as_tuple=True)
        x, y = fx[g], fy[g]
        cx, cy = x.long().clamp(0, w - 1), y.long().clamp(0, h - 1)
        # the neighbour across the nearer cell edge, in x and in y (when inside the grid)
        nx = torch.where(x - cx < 0.5, cx - 1, cx + 1)
        ny = torch.where(y - cy < 0.5, cy - 1, cy + 1)
        okx, oky = (nx >= 0) & (nx < w), (ny >= 0) & (ny < h)
        gg = torch.cat([g, g[okx], g[oky]])
        kk = torch.cat([k, k[okx], k[oky]])
        return gg, kk, torch.cat([cx, nx[okx], cx[oky]]), torch.cat([cy, cy[okx], ny[oky]])

    def forward(self, raw: list[torch.Tensor], targets: list[dict], image_size, anchors: torch.Tensor | None = None):
        anchors = self.anchors if anchors is None else anchors
        ih, iw = image_hw(image_size)
        na = raw[0].shape[1]
        dev = raw[0].device
        gts = [_gt(t, dev) for t in targets]
        eps = self.label_smoothing
        box_terms, cls_terms, obj = [], [], raw[0].new_zeros(())
        for s, r in enumerate(raw):
            n, _, h, w = r.shape[:4]
            anc = anchors[s * na : (s + 1) * na]
            pred = cxcywh_to_xyxy(anchor_boxes(r, anc, image_size, grid_sensitive=self.grid_sensitive))
            tobj = torch.zeros_like(r[..., 4])
            weight = torch.ones_like(tobj)
            for i, (boxes, labels) in enumerate(gts):
                if len(boxes) == 0:
                    continue
                if self.ignore_iou is not None:
                    best = box_iou(pred[i].detach().reshape(-1, 4), boxes).max(1).values.view(na, h, w)
                    weight[i][best > self.ignore_iou] = 0.0
                c = _cxcywh(boxes)
                g, k, gx, gy = self._match(c, anchors, s, na, h, w, ih, iw)
                if len(g) == 0:
                    continue
                rp, pb = r[i, k, gy, gx], pred[i, k, gy, gx]
                if self.box_loss == "mse":
                    fx, fy = c[g, 0] / iw * w, c[g, 1] / ih * h
                    t = torch.stack([fx - gx, fy - gy, (c[g, 2] / anc[k, 0]).log(), (c[g, 3] / anc[k, 1]).log()], 1)
                    box_terms.append(((torch.cat([rp[:, :2].sigmoid(), rp[:, 2:4]], 1) - t) ** 2).sum(1))
                else:
                    fn = giou_loss if self.box_loss == "giou" else ciou_loss
                    box_terms.append(fn(pb, boxes[g]))
                target = F.one_hot(labels[g], self.c).float() * (1 - eps) + eps / 2
                cls_terms.append(F.binary_cross_entropy_with_logits(rp[:, 5:], target, reduction="none").sum(1))
                tobj[i, k, gy, gx] = paired_iou(pb, boxes[g]).detach().clamp(0) if self.obj_target == "iou" else 1.0
                weight[i, k, gy, gx] = 1.0
            bce = F.binary_cross_entropy_with_logits(r[..., 4], tobj, weight=weight, reduction="sum")
            if self.obj_norm == "cells":
                obj = obj + self.w.balance[s] * bce / weight.sum().clamp(min=1)
            else:
                obj = obj + bce
        if self.obj_norm == "positives":
            obj = obj / max(1, sum(len(t) for t in box_terms))
        box = torch.cat(box_terms).mean() if box_terms else obj * 0
        cls = torch.cat(cls_terms).mean() if cls_terms else obj * 0
        box, obj, cls = self.w.box * box, self.w.obj * obj, self.w.cls * cls
        return box + obj + cls, _parts(box=box, obj=obj, cls=cls)
