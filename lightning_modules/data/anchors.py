"""Anchor boxes by k-means on box sizes with distance 1 - IoU (YOLOv2 style).

Boxes are compared by (w, h) only, as if aligned at a common centre. Two fit measures:
- avg IoU: mean over boxes of the best IoU with any anchor.
- BPR (best possible recall, YOLOv5 definition): the fraction of boxes whose best anchor
  fits by ratio, i.e. min over anchors of max(w/aw, aw/w, h/ah, ah/h) < 4.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightning_modules.errors import DataError

ANCHOR_COUNTS = {"v2": 5, "v3": 9}
BPR_RATIO = 4.0  # YOLOv5's anchor_t


@dataclass
class AnchorResult:
    anchors: list[list[float]]  # [[w, h]] pixels at the letterbox size, sorted by area
    avg_iou: float
    bpr: float
    n_boxes: int


def letterbox_wh(boxes_wh: np.ndarray, image_wh: np.ndarray, size: int) -> np.ndarray:
    """Scale box (w, h) as if each image were letterboxed to `size`: scale = size / max(w, h) of the image."""
    boxes_wh = np.asarray(boxes_wh, dtype=np.float64).reshape(-1, 2)
    image_wh = np.asarray(image_wh, dtype=np.float64).reshape(-1, 2)
    return boxes_wh * (size / image_wh.max(axis=1, keepdims=True))


def wh_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, K] between (w, h) sizes a [N, 2] and b [K, 2], boxes sharing a centre."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)[:, None, :]
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)[None, :, :]
    inter = np.minimum(a, b).prod(axis=2)
    return inter / (a.prod(axis=2) + b.prod(axis=2) - inter)


def iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k-means distance 1 - IoU, [N, K]."""
    return 1.0 - wh_iou(a, b)


def average_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    return float(wh_iou(wh, anchors).max(axis=1).mean())


def best_possible_recall(wh: np.ndarray, anchors: np.ndarray, thr: float = BPR_RATIO) -> float:
    """YOLOv5 BPR: fraction of boxes with min over anchors of max(w/aw, aw/w, h/ah, ah/h) < thr."""
    r = np.asarray(wh, dtype=np.float64)[:, None, :] / np.asarray(anchors, dtype=np.float64)[None]
    worst_side = np.maximum(r, 1.0 / r).max(axis=2)  # [N, K]
    return float((worst_side.min(axis=1) < thr).mean())


def _init_plus_plus(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with the 1 - IoU distance."""
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = iou_distance(wh, np.array(centres)).min(axis=1) ** 2
        p = d / d.sum() if d.sum() > 0 else np.full(len(wh), 1.0 / len(wh))  # all boxes identical
        centres.append(wh[rng.choice(len(wh), p=p)])
    return np.array(centres)


def _kmeans_once(wh: np.ndarray, k: int, rng: np.random.Generator, max_iter: int) -> np.ndarray:
    centres = _init_plus_plus(wh, k, rng)
    assign = None
    for _ in range(max_iter):
        new = iou_distance(wh, centres).argmin(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = wh[assign == j]
            if len(members):
                centres[j] = np.median(members, axis=0)  # median: robust to stray boxes (YOLOv2 practice)
            else:  # empty cluster: take the worst-fitted box
                centres[j] = wh[wh_iou(wh, centres).max(axis=1).argmin()]
    return centres


def kmeans_anchors(wh: np.ndarray, k: int, *, seed: int = 0, n_init: int = 4, max_iter: int = 300) -> np.ndarray:
    """k anchors [k, 2] sorted by area; the best of `n_init` seeded k-means++ runs by avg IoU."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(axis=1)]
    if len(wh) < k:
        raise DataError(None, f"need at least {k} boxes with positive size for {k} anchors, got {len(wh)}")
    rng = np.random.default_rng(seed)
    best, best_iou = None, -1.0
    for _ in range(n_init):
        centres = _kmeans_once(wh, k, rng, max_iter)
        score = average_iou(wh, centres)
        if score > best_iou:
            best, best_iou = centres, score
    return best[np.argsort(best.prod(axis=1), kind="stable")]


def compute_anchors(wh: np.ndarray, k: int, *, seed: int = 0, source: str | None = None) -> AnchorResult:
    """Anchors for box sizes `wh` [N, 2] (already letterbox-scaled), with their avg IoU and BPR."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(axis=1)]
    if len(wh) < k:
        raise DataError(source, f"only {len(wh)} boxes, fewer than the {k} anchors asked for")
    anchors = kmeans_anchors(wh, k, seed=seed)
    return AnchorResult(
        anchors=[[round(float(w), 2), round(float(h), 2)] for w, h in anchors],
        avg_iou=average_iou(wh, anchors),
        bpr=best_possible_recall(wh, anchors),
        n_boxes=len(wh),
    )
