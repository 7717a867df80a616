"""Anchors: k-means with 1 - IoU distance, BPR, avg IoU."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_modules.data.anchors import (
    average_iou,
    best_possible_recall,
    compute_anchors,
    iou_distance,
    kmeans_anchors,
    letterbox_wh,
    wh_iou,
)
from lightning_modules.errors import DataError

CENTRES = np.array([[10.0, 20.0], [50.0, 40.0], [120.0, 150.0]])


def _clustered(seed: int = 1, per: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c * rng.uniform(0.97, 1.03, size=(per, 2)) for c in CENTRES])


def test_kmeans_recovers_three_clusters():
    anchors = kmeans_anchors(_clustered(), 3, seed=0)
    np.testing.assert_allclose(anchors, CENTRES, rtol=0.03)


def test_iou_distance_symmetric_and_zero_on_identical():
    a = np.array([[10.0, 20.0], [5.0, 5.0], [30.0, 7.0]])
    b = np.array([[12.0, 18.0], [5.0, 5.0]])
    np.testing.assert_allclose(iou_distance(a, b), iou_distance(b, a).T)
    np.testing.assert_allclose(np.diag(iou_distance(a, a)), 0.0, atol=1e-12)
    # two boxes at a common centre: 10x20 vs 20x10 overlap 10x10 = 100, union 300
    assert wh_iou([[10, 20]], [[20, 10]])[0, 0] == pytest.approx(1 / 3)


def test_bpr_and_avg_iou_perfect_when_anchors_are_the_boxes():
    wh = np.array([[10.0, 20.0], [50.0, 40.0], [120.0, 150.0]])
    assert best_possible_recall(wh, wh) == 1.0
    assert average_iou(wh, wh) == pytest.approx(1.0)
    res = compute_anchors(wh, 3)
    assert res.bpr == 1.0 and res.avg_iou == pytest.approx(1.0)
    assert res.anchors == [[10.0, 20.0], [50.0, 40.0], [120.0, 150.0]]  # sorted by area


def test_bpr_uses_yolov5_ratio_threshold():
    assert best_possible_recall(np.array([[100.0, 100.0]]), np.array([[20.0, 20.0]])) == 0.0  # ratio 5
    assert best_possible_recall(np.array([[100.0, 100.0]]), np.array([[30.0, 30.0]])) == 1.0  # ratio 3.3


def test_deterministic_by_seed():
    wh = np.random.default_rng(3).uniform(5, 200, size=(200, 2))
    a = compute_anchors(wh, 9, seed=7)
    b = compute_anchors(wh, 9, seed=7)
    assert a == b
    areas = [w * h for w, h in a.anchors]
    assert areas == sorted(areas)


def test_fewer_boxes_than_k_is_a_data_error():
    with pytest.raises(DataError, match="fewer than the 5 anchors"):
        compute_anchors(np.array([[1.0, 2.0]] * 4), 5, source="train.json")


def test_letterbox_scale_uses_longer_image_side():
    out = letterbox_wh(np.array([[50.0, 25.0]]), np.array([[200.0, 100.0]]), 416)
    np.testing.assert_allclose(out, [[104.0, 52.0]])
