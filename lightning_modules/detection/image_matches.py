"""mAP@[.5:.95] of any subset of the test images, fast enough to recompute a thousand times.

COCOeval matches detections to ground truth image by image, so the matches of each image can be
computed once (`image_matches`) and any resample of images (repeats allowed) scored from them by
concatenation (`map_score`): greedy matching by score at IoU 0.50:0.05:0.95, 101-point interpolated
precision, averaged over thresholds and over the classes that have ground truth. This is COCO's rule
without its area ranges and crowd regions (our sets have none); the paired bootstrap of the promotion
uses it on both models alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class ImageMatches:
    """Per image: its detections (class, score, true positive at each IoU threshold) and ground-truth counts."""

    labels: list[np.ndarray]  # [D] class of each detection
    scores: list[np.ndarray]  # [D]
    tp: list[np.ndarray]  # [D, T] bool
    gt_counts: np.ndarray  # [images, classes]

    def __len__(self) -> int:
        return len(self.labels)


def image_matches(gt: list[dict], pred: list[dict], num_classes: int) -> ImageMatches:
    """Match each image's predictions ({"boxes", "scores", "labels"}) to its ground truth ({"boxes", "labels"})."""
    labels, scores, tps = [], [], []
    counts = np.zeros((len(gt), num_classes), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gt, pred, strict=True)):
        g_labels = torch.as_tensor(g["labels"]).long()
        counts[i] = np.bincount(g_labels.numpy(), minlength=num_classes)[:num_classes]
        p_scores, p_labels = torch.as_tensor(p["scores"]).float(), torch.as_tensor(p["labels"]).long()
        order = torch.argsort(p_scores, descending=True)
        p_boxes, p_scores, p_labels = torch.as_tensor(p["boxes"]).float()[order], p_scores[order], p_labels[order]
        tp = np.zeros((len(order), len(THRESHOLDS)), dtype=bool)
        for c in p_labels.unique().tolist():
            mine, theirs = (p_labels == c).nonzero().flatten(), (g_labels == c).nonzero().flatten()
            if len(theirs):
                iou = box_iou(p_boxes[mine], torch.as_tensor(g["boxes"]).float()[theirs]).numpy()
                tp[mine.numpy()] = _greedy(iou)
        labels.append(p_labels.numpy())
        scores.append(p_scores.numpy())
        tps.append(tp)
    return ImageMatches(labels, scores, tps, counts)


def _greedy(iou: np.ndarray) -> np.ndarray:
    """COCO's matching, detections in score order: each takes the best still-free ground truth above t."""
    out = np.zeros((iou.shape[0], len(THRESHOLDS)), dtype=bool)
    for t, threshold in enumerate(THRESHOLDS):
        free = np.ones(iou.shape[1], dtype=bool)
        for d in range(iou.shape[0]):
            candidates = np.where(free & (iou[d] >= threshold), iou[d], -1.0)
            j = int(candidates.argmax())
            if candidates[j] >= 0:
                free[j], out[d, t] = False, True
    return out


def map_score(matches: ImageMatches, idx: np.ndarray) -> float:
    """mAP@[.5:.95] over the images `idx` (repeats count as copies)."""
    labels = np.concatenate([matches.labels[i] for i in idx])
    scores = np.concatenate([matches.scores[i] for i in idx])
    tp = np.concatenate([matches.tp[i] for i in idx]).reshape(-1, len(THRESHOLDS))
    gt = matches.gt_counts[idx].sum(0)
    aps = [_ap(scores[labels == c], tp[labels == c], int(n)) for c, n in enumerate(gt) if n > 0]
    return float(np.mean(aps)) if aps else 0.0


def _ap(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """Mean over IoU thresholds of the 101-point interpolated AP of one class."""
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")  # stable, like COCOeval
    hits = np.cumsum(tp[order], axis=0)
    precision = hits / np.arange(1, len(order) + 1)[:, None]
    recall = hits / n_gt
    precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]  # precision envelope
    aps = []
    for t in range(tp.shape[1]):
        at = np.searchsorted(recall[:, t], RECALL_POINTS, side="left")
        aps.append(np.where(at < len(order), precision[np.minimum(at, len(order) - 1), t], 0.0).mean())
    return float(np.mean(aps))
