"""Detection metrics: torchmetrics mAP equals pycocotools COCOeval; VOC AP by hand; files; CLI."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import pytest
import torch

from lightning_modules.detection.cocoio import load_coco_gt, load_coco_results, write_coco_gt, write_coco_results
from lightning_modules.detection.metrics import (
    COCO_KEYS,
    confusion_matrix,
    draw_samples,
    evaluate_detections,
    voc_map,
)
from lightning_modules.errors import DataError

TOL = 1e-4
NAMES = ["cat", "dog", "car", "bus"]


def _cocoeval(gt_path, pred_path):
    """pycocotools reference: 12 stats and per-category (AP, AP50) keyed by category id."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(pred_path))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    per = {}
    for k, cat in enumerate(ev.params.catIds):
        p, p50 = prec[:, :, k, 0, -1], prec[0, :, k, 0, -1]
        per[cat] = (p[p > -1].mean() if (p > -1).any() else -1.0, p50[p50 > -1].mean() if (p50 > -1).any() else -1.0)
    return list(ev.stats), per


def _random_case(seed: int, n_images=12, k=4):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    gts, preds = [], []
    for i in range(n_images):
        n = 0 if i % 5 == 0 else int(torch.randint(1, 7, (1,), generator=g))
        side = 8 + rand(n) * 140  # small, medium and large objects
        xy = rand(n, 2) * 250
        wh = torch.stack([side * (0.6 + 0.8 * rand(n)), side], 1)
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, k, (n,), generator=g)
        crowd = (rand(n) < 0.1).long()
        area = wh.prod(1) * (0.5 + 0.5 * rand(n))  # like a segment's area: not the box area
        gts.append({"boxes": boxes, "labels": labels, "area": area, "iscrowd": crowd})
        # detections: jittered GT (some with the wrong class), duplicates, random false positives
        keep = rand(n) < 0.8
        jit = boxes[keep] + (rand(int(keep.sum()), 4) - 0.5) * 0.3 * side[keep, None]
        jlab = torch.where(rand(len(jit)) < 0.15, torch.randint(0, k, (len(jit),), generator=g), labels[keep])
        dup = jit[: len(jit) // 2] + rand(len(jit) // 2, 4) * 3
        nfp = int(torch.randint(0, 5, (1,), generator=g))
        fxy = rand(nfp, 2) * 250
        fp = torch.cat([fxy, fxy + 10 + rand(nfp, 2) * 80], 1)
        pb = torch.cat([jit, dup, fp])
        pb = torch.cat([pb[:, :2], torch.maximum(pb[:, 2:], pb[:, :2] + 1)], 1)
        pl = torch.cat([jlab, jlab[: len(dup)], torch.randint(0, k, (nfp,), generator=g)])
        preds.append({"boxes": pb, "labels": pl, "scores": rand(len(pb))})
    return gts, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_pycocotools(tmp_path, seed):
    gts, preds = _random_case(seed)
    ids, cats = [3 * i + 7 for i in range(len(gts))], [1, 5, 9, 20]  # non-contiguous COCO ids
    gp = write_coco_gt(tmp_path / "gt.json", gts, NAMES, image_ids=ids, cat_ids=cats)
    pp = write_coco_results(tmp_path / "pred.json", preds, image_ids=ids, cat_ids=cats)
    stats, per = _cocoeval(gp, pp)

    gt = load_coco_gt(gp)
    r = evaluate_detections(gt.items, load_coco_results(pp, gt), gt.class_names)
    diffs = [abs(r[key] - s) for key, s in zip(COCO_KEYS, stats)]
    for name, cat in zip(NAMES, cats):
        diffs += [abs(r["per_class"][name]["ap"] - per[cat][0]), abs(r["per_class"][name]["ap50"] - per[cat][1])]
    print(f"seed {seed}: max |torchmetrics - COCOeval| = {max(diffs):.2e}")
    assert max(diffs) <= TOL, (dict(zip(COCO_KEYS, stats)), r)
    assert 0.05 < r["map"] < 0.95  # a non-trivial case


def test_perfect_none_and_duplicates():
    gts, _ = _random_case(5)
    for g in gts:
        g["iscrowd"] = torch.zeros_like(g["labels"])
    perfect = [{"boxes": g["boxes"], "labels": g["labels"], "scores": torch.ones(len(g["labels"]))} for g in gts]
    r = evaluate_detections(gts, perfect, NAMES)
    for key in ("map", "map_50", "map_75", "mar_100", "voc07_ap50", "voc10_ap50"):
        assert r[key] == pytest.approx(1.0, abs=1e-6), key

    empty = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)} for _ in gts
    ]
    r = evaluate_detections(gts, empty, NAMES)
    assert r["map"] == pytest.approx(0.0) and r["mar_100"] == pytest.approx(0.0)
    assert r["voc07_ap50"] == 0.0 and r["voc10_ap50"] == 0.0

    # A duplicate below the true hit is a false positive after full recall: AP stays 1. A duplicate
    # scored above it is ranked first and takes the match, so again AP 1, but precision curve differs.
    gt = [{"boxes": torch.tensor([[0.0, 0, 50, 50]]), "labels": torch.tensor([0])}]
    dup = [
        {
            "boxes": torch.tensor([[0.0, 0, 50, 50], [1.0, 1, 50, 50]]),
            "labels": torch.tensor([0, 0]),
            "scores": torch.tensor([0.9, 0.8]),
        }
    ]
    r = evaluate_detections(gt, dup, ["a"])
    assert r["map_50"] == pytest.approx(1.0) and r["voc10_ap50"] == pytest.approx(1.0)
    # a false positive above the hit halves precision at full recall
    fp_first = [
        {
            "boxes": torch.tensor([[100.0, 100, 150, 150], [0.0, 0, 50, 50]]),
            "labels": torch.tensor([0, 0]),
            "scores": torch.tensor([0.9, 0.8]),
        }
    ]
    r = evaluate_detections(gt, fp_first, ["a"])
    assert r["voc10_ap50"] == pytest.approx(0.5) and r["map_50"] == pytest.approx(0.5, abs=TOL)


def _hand_case():
    t = torch.tensor
    gts = [
        {"boxes": t([[0.0, 0, 10, 10], [50, 50, 60, 60]]), "labels": t([0, 0])},
        {
            "boxes": t([[0.0, 0, 20, 20], [40, 40, 60, 60], [70, 70, 90, 90]]),
            "labels": t([0, 0, 2]),
            "difficult": t([False, True, False]),
        },
    ]
    preds = [
        {
            "boxes": t([[0.0, 0, 10, 10], [80, 80, 90, 90], [0, 0, 10, 11]]),
            "labels": t([0, 0, 0]),
            "scores": t([0.9, 0.8, 0.5]),
        },
        {
            "boxes": t([[40.0, 40, 60, 60], [1, 1, 20, 20], [70, 70, 90, 90], [5, 5, 9, 9]]),
            "labels": t([0, 0, 2, 1]),
            "scores": t([0.7, 0.6, 0.95, 0.3]),
        },
    ]
    return gts, preds


def test_voc_ap_hand_computed():
    # class 0 in score order: TP, FP, (difficult: ignored), TP, FP (duplicate); 3 positives.
    # rec = 1/3 1/3 2/3 2/3, prec = 1 1/2 2/3 1/2 -> VOC10 = 1/3*1 + 1/3*2/3 = 5/9;
    # VOC07 = (4 points at p=1 for r<=0.3, 3 at 2/3 for r in .4..0.6) / 11 = 6/11.
    gts, preds = _hand_case()
    v = voc_map(gts, preds, 3)
    assert v["voc10_per_class"][0] == pytest.approx(5 / 9)
    assert v["voc07_per_class"][0] == pytest.approx(6 / 11)
    assert v["voc10_per_class"][1] == -1.0  # no ground truth: undefined, left out of the mean
    assert v["voc10_per_class"][2] == pytest.approx(1.0)
    assert v["voc10_ap50"] == pytest.approx((5 / 9 + 1) / 2)
    assert v["voc07_ap50"] == pytest.approx((6 / 11 + 1) / 2)


def test_confusion_matrix():
    gts, preds = _hand_case()
    cm = confusion_matrix(gts, preds, 3)
    # rows: true 0,1,2,bg; cols: pred 0,1,2,bg
    assert cm.tolist() == [[3, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0], [2, 1, 0, 0]]


def test_figures_and_samples(tmp_path):
    gts, preds = _hand_case()
    r = evaluate_detections(gts, preds, ["a", "b", "c"], out_dir=tmp_path / "ev")
    for p in ("pr_curves", "confusion_matrix", "table"):
        assert (tmp_path / "ev").joinpath(r["figures"][p].split("/")[-1]).stat().st_size > 0
    images = [torch.zeros(3, 100, 100, dtype=torch.uint8) for _ in gts]
    paths = draw_samples(images, gts, preds, ["a", "b", "c"], tmp_path / "s", n=8)
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)
    from torchvision.io import read_image

    img = read_image(str(paths[0]))
    assert img[1, 0, 5] > 200 or img[0, 0, 5] > 200  # a box edge was drawn at y=0
    json.dumps(r)  # plain JSON types


def _cli(argv):
    from lightning_modules.detection.eval_cli import add_detect_eval_command

    parser = argparse.ArgumentParser()
    add_detect_eval_command(parser.add_subparsers())
    a = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        a.fn(a)
    return out.getvalue()


def test_cli_json_table_and_errors(tmp_path):
    gts, preds = _random_case(3, n_images=5)
    gp = write_coco_gt(tmp_path / "gt.json", gts, NAMES)
    pp = write_coco_results(tmp_path / "pred.json", preds)
    d = json.loads(_cli(["detect-eval", "--gt", str(gp), "--pred", str(pp), "--json"]))
    stats, _ = _cocoeval(gp, pp)
    assert abs(d["map"] - stats[0]) <= TOL and abs(d["map_50"] - stats[1]) <= TOL
    assert set(COCO_KEYS) | {"voc07_ap50", "voc10_ap50", "per_class"} <= set(d)
    assert set(d["per_class"]) == set(NAMES)
    text = _cli(["detect-eval", "--gt", str(gp), "--pred", str(pp), "--out", str(tmp_path / "o")])
    assert "map_50" in text and "dog" in text and (tmp_path / "o" / "pr_curves.png").exists()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    with pytest.raises(DataError, match=r"bad\.json.*image_id 999"):
        _cli(["detect-eval", "--gt", str(gp), "--pred", str(bad)])
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        _cli(["detect-eval", "--gt", str(bad), "--pred", str(pp)])
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}]))
    with pytest.raises(DataError, match="bbox"):
        _cli(["detect-eval", "--gt", str(gp), "--pred", str(bad)])


@pytest.mark.parametrize("seed", [0, 1])
def test_per_image_matches_give_cocos_map_on_any_resample(seed):
    """The promotion's bootstrap rescores resamples from per-image matches: on the whole set (and on a
    resample, where repeated images count as copies) that is COCO's mAP (no crowd regions here)."""
    import numpy as np

    from lightning_modules.detection.image_matches import image_matches, map_score

    gts, preds = _random_case(seed)
    gts = [{**g, "iscrowd": torch.zeros_like(g["iscrowd"])} for g in gts]
    matches = image_matches(gts, preds, len(NAMES))
    assert map_score(matches, np.arange(len(gts))) == pytest.approx(
        evaluate_detections(gts, preds, NAMES)["map"], abs=TOL
    )
    idx = np.random.default_rng(seed).integers(0, len(gts), len(gts))
    copies = [gts[i] for i in idx], [preds[i] for i in idx]
    assert map_score(matches, idx) == pytest.approx(evaluate_detections(*copies, NAMES)["map"], abs=TOL)
