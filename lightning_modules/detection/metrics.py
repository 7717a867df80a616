"""Detection metrics: COCO mAP (torchmetrics, faster-coco-eval backend), VOC07/VOC10 AP@0.5,
per-class tables, precision/recall curves, a confusion matrix and drawn samples.

Inputs are per image: gt {"boxes" [N,4] xyxy pixels, "labels" int64 [N], optional "area",
"iscrowd", "difficult"}; pred {"boxes", "labels", "scores"}. Undefined values (a class without
ground truth) are -1, torchmetrics' convention.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.io import ImageReadMode, read_image
from torchvision.ops import box_iou
from torchvision.utils import draw_bounding_boxes, save_image

from lightning_modules.reporting.class_labels import add_legend, axis_labels

# faster-coco-eval logs COCOeval's whole summary table at INFO (84 lines per evaluation) through the
# `faster_coco_eval` logger; our own summary goes to metadata, MLflow and one log line instead.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

COCO_KEYS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)
VOC_IOU = 0.5


def _gt_item(g: dict) -> dict:
    # float64 so xyxy -> xywh conversion does not move boxes compared with the json's xywh.
    item = {
        "boxes": torch.as_tensor(g["boxes"], dtype=torch.float64).reshape(-1, 4),
        "labels": torch.as_tensor(g["labels"], dtype=torch.int64).reshape(-1),
    }
    for key, dtype in (("area", torch.float64), ("iscrowd", torch.int64)):
        if g.get(key) is not None:
            item[key] = torch.as_tensor(g[key], dtype=dtype).reshape(-1)
    return item


def _pred_item(p: dict) -> dict:
    return {
        "boxes": torch.as_tensor(p["boxes"], dtype=torch.float64).reshape(-1, 4),
        "labels": torch.as_tensor(p["labels"], dtype=torch.int64).reshape(-1),
        "scores": torch.as_tensor(p["scores"], dtype=torch.float64).reshape(-1),
    }


def coco_map(gt: list[dict], pred: list[dict]) -> dict:
    """torchmetrics MeanAveragePrecision (COCO protocol); floats, per-class AP, AP50 and AR100."""
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth images but {len(pred)} prediction images")
    # COCOeval's thresholds in float64: torchmetrics' defaults are float32 linspaces, and a recall
    # threshold like float32(0.2) > 0.2 moves COCOeval's searchsorted (mAP off by up to ~1e-2).
    iou_thr = np.linspace(0.5, 0.95, 10).tolist()
    rec_thr = np.linspace(0.0, 1.0, 101).tolist()
    metric = MeanAveragePrecision(
        backend="faster_coco_eval",
        iou_type="bbox",
        class_metrics=True,
        extended_summary=True,
        iou_thresholds=iou_thr,
        rec_thresholds=rec_thr,
        max_detection_thresholds=[1, 10, 100],
        # one process scores everything it is given: never wait on other
        # ranks (rank 0 scores the validation set after a DDP fit)
        sync_on_compute=False,
    )
    metric.warn_on_many_detections = False
    metric.update([_pred_item(p) for p in pred], [_gt_item(g) for g in gt])
    # faster-coco-eval prints COCOeval's summary for every class; keep stdout for our own table.
    with contextlib.redirect_stdout(io.StringIO()):
        r = metric.compute()
    out = {k: float(r[k]) for k in COCO_KEYS}
    classes = [int(c) for c in r["classes"].reshape(-1).tolist()]
    out["classes"] = classes
    out["map_per_class"] = _per_class(r["map_per_class"], len(classes))
    out["mar_100_per_class"] = _per_class(r["mar_100_per_class"], len(classes))
    # AP at IoU 0.5 per class, as COCOeval's summarize does it: mean of the valid precisions.
    ap50 = []
    prec = r.get("precision")
    for k in range(len(classes)):
        if prec is None or prec.ndim != 5:
            ap50.append(-1.0)
            continue
        p = prec[0, :, k, 0, -1]
        p = p[p > -1]
        ap50.append(float(p.mean()) if p.numel() else -1.0)
    out["map_50_per_class"] = ap50
    return out


def _per_class(t: torch.Tensor, k: int) -> list[float]:
    vals = [float(v) for v in t.reshape(-1).tolist()]
    return vals if len(vals) == k else [-1.0] * k


def voc_ap(rec: torch.Tensor, prec: torch.Tensor, *, use_07: bool) -> float:
    """AP from a recall/precision curve: VOC07 11-point or VOC10+ all-point interpolation."""
    rec, prec = rec.double(), prec.double()
    if use_07:
        ap = 0.0
        for t in torch.linspace(0, 1, 11, dtype=torch.float64):
            sel = prec[rec >= t - 1e-12]
            ap += (float(sel.max()) if sel.numel() else 0.0) / 11
        return ap
    mrec = torch.cat([torch.zeros(1, dtype=torch.float64), rec, torch.ones(1, dtype=torch.float64)])
    mpre = torch.cat([torch.zeros(1, dtype=torch.float64), prec, torch.zeros(1, dtype=torch.float64)])
    mpre = torch.flip(torch.cummax(torch.flip(mpre, [0]), 0).values, [0])  # precision envelope
    idx = torch.nonzero(mrec[1:] != mrec[:-1]).reshape(-1)
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


def voc_pr_curve(gt: list[dict], pred: list[dict], cls: int, iou: float = VOC_IOU):
    """Recall, precision (per ranked detection) and number of positives for one class.

    Greedy matching in score order, IoU >= `iou` (VOC devkit); 'difficult' (and crowd) GT are
    ignored: matching one is neither a TP nor an FP, and they do not count as positives.
    """
    npos = 0
    dets = []  # (score, image, box)
    for i, (g, p) in enumerate(zip(gt, pred)):
        gl = torch.as_tensor(g["labels"]).reshape(-1)
        ign = _ignored(g, len(gl))
        npos += int(((gl == cls) & ~ign).sum())
        pl = torch.as_tensor(p["labels"]).reshape(-1)
        sel = torch.nonzero(pl == cls).reshape(-1)
        boxes = torch.as_tensor(p["boxes"], dtype=torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(p["scores"], dtype=torch.float64).reshape(-1)
        dets += [(float(scores[j]), i, boxes[j]) for j in sel.tolist()]
    dets.sort(key=lambda d: -d[0])  # stable: ties keep input order
    used: dict[int, torch.Tensor] = {}
    tp, fp = [], []
    for _, i, box in dets:
        g = gt[i]
        gl = torch.as_tensor(g["labels"]).reshape(-1)
        keep = torch.nonzero(gl == cls).reshape(-1)
        gboxes = torch.as_tensor(g["boxes"], dtype=torch.float64).reshape(-1, 4)[keep]
        ign = _ignored(g, len(gl))[keep]
        flag = used.setdefault(i, torch.zeros(len(keep), dtype=torch.bool))
        if len(keep):
            ious = box_iou(box[None], gboxes)[0]
            best, j = float(ious.max()), int(ious.argmax())
        else:
            best, j = 0.0, -1
        if best >= iou and ign[j]:
            continue  # matched a difficult object: ignored
        hit = best >= iou and not flag[j]
        if hit:
            flag[j] = True
        tp.append(float(hit))
        fp.append(float(not hit))
    tp_c = torch.cumsum(torch.tensor(tp, dtype=torch.float64), 0)
    fp_c = torch.cumsum(torch.tensor(fp, dtype=torch.float64), 0)
    rec = tp_c / max(npos, 1)
    prec = tp_c / torch.clamp(tp_c + fp_c, min=1e-12)
    return rec, prec, npos


def _ignored(g: dict, n: int) -> torch.Tensor:
    ign = torch.zeros(n, dtype=torch.bool)
    for key in ("difficult", "iscrowd"):
        if g.get(key) is not None:
            ign |= torch.as_tensor(g[key]).reshape(-1).bool()
    return ign


def voc_map(gt: list[dict], pred: list[dict], num_classes: int) -> dict:
    """VOC07 11-point and VOC10 all-point AP@0.5 per class (-1 without GT) and their means."""
    per07, per10, curves = [], [], []
    for c in range(num_classes):
        rec, prec, npos = voc_pr_curve(gt, pred, c)
        curves.append((rec, prec, npos))
        per07.append(voc_ap(rec, prec, use_07=True) if npos else -1.0)
        per10.append(voc_ap(rec, prec, use_07=False) if npos else -1.0)
    valid = [k for k in range(num_classes) if curves[k][2] > 0]
    mean = lambda v: sum(v[k] for k in valid) / len(valid) if valid else -1.0  # noqa: E731
    return {
        "voc07_ap50": mean(per07),
        "voc10_ap50": mean(per10),
        "voc07_per_class": per07,
        "voc10_per_class": per10,
        "curves": curves,
    }


def confusion_matrix(
    gt: list[dict], pred: list[dict], num_classes: int, *, iou: float = 0.5, score_threshold: float = 0.25
) -> torch.Tensor:
    """[K+1, K+1] counts, rows = true class, columns = predicted; index K is background.

    Predictions above `score_threshold` are matched one-to-one to GT at IoU >= `iou`, regardless of
    class, highest IoU first; unmatched GT count as 'predicted background', unmatched predictions as
    'true background'.
    """
    k = num_classes
    m = torch.zeros(k + 1, k + 1, dtype=torch.int64)
    for g, p in zip(gt, pred):
        gl = torch.as_tensor(g["labels"]).reshape(-1)
        gb = torch.as_tensor(g["boxes"], dtype=torch.float64).reshape(-1, 4)
        keep = torch.as_tensor(p["scores"]).reshape(-1) >= score_threshold
        pl = torch.as_tensor(p["labels"]).reshape(-1)[keep]
        pb = torch.as_tensor(p["boxes"], dtype=torch.float64).reshape(-1, 4)[keep]
        g_done = torch.zeros(len(gl), dtype=torch.bool)
        p_done = torch.zeros(len(pl), dtype=torch.bool)
        if len(gl) and len(pl):
            ious = box_iou(gb, pb)
            pairs = torch.nonzero(ious >= iou)
            order = torch.argsort(ious[pairs[:, 0], pairs[:, 1]], descending=True, stable=True)
            for gi, pi in pairs[order].tolist():
                if not g_done[gi] and not p_done[pi]:
                    g_done[gi] = p_done[pi] = True
                    m[int(gl[gi]), int(pl[pi])] += 1
        for c in gl[~g_done].tolist():
            m[c, k] += 1
        for c in pl[~p_done].tolist():
            m[k, c] += 1
    return m


def evaluate_detections(gt: list[dict], pred: list[dict], class_names, *, out_dir=None) -> dict:
    """All detection metrics; with `out_dir`, also PR curves, confusion matrix and AP table files."""
    names = list(class_names)
    _check_labels(gt, pred, len(names))
    coco = coco_map(gt, pred)
    voc = voc_map(gt, pred, len(names))
    result = {k: coco[k] for k in COCO_KEYS}
    result["voc07_ap50"] = voc["voc07_ap50"]
    result["voc10_ap50"] = voc["voc10_ap50"]
    pos = {c: i for i, c in enumerate(coco["classes"])}
    per_class = {}
    for c, name in enumerate(names):
        i = pos.get(c)
        per_class[name] = {
            "ap": coco["map_per_class"][i] if i is not None else -1.0,
            "ap50": coco["map_50_per_class"][i] if i is not None else -1.0,
            "ar100": coco["mar_100_per_class"][i] if i is not None else -1.0,
            "voc07_ap50": voc["voc07_per_class"][c],
            "voc10_ap50": voc["voc10_per_class"][c],
            "gt": voc["curves"][c][2],
        }
    result["per_class"] = per_class
    cm = confusion_matrix(gt, pred, len(names))
    result["confusion_matrix"] = cm.tolist()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result["figures"] = {
            "pr_curves": str(plot_pr_curves(voc["curves"], names, per_class, out / "pr_curves.png")),
            "confusion_matrix": str(plot_confusion_matrix(cm, names, out / "confusion_matrix.png")),
        }
        (out / "per_class_ap.txt").write_text(format_table(result) + "\n")
        result["figures"]["table"] = str(out / "per_class_ap.txt")
    return result


def _check_labels(gt: list[dict], pred: list[dict], k: int) -> None:
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth images but {len(pred)} prediction images")
    for kind, items in (("ground truth", gt), ("prediction", pred)):
        for i, it in enumerate(items):
            lab = torch.as_tensor(it["labels"]).reshape(-1)
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= k):
                raise ValueError(f"{kind} image {i}: label outside 0..{k - 1}")


def format_table(result: dict) -> str:
    """Summary numbers and the per-class AP table as text."""
    lines = [f"{k:<12} {result[k]:.4f}" for k in (*COCO_KEYS, "voc07_ap50", "voc10_ap50")]
    lines.append("")
    w = max([5] + [len(n) for n in result["per_class"]])
    lines.append(f"{'class':<{w}} {'gt':>6} {'AP':>7} {'AP50':>7} {'VOC07':>7} {'VOC10':>7}")
    for name, r in result["per_class"].items():
        lines.append(
            f"{name:<{w}} {r['gt']:>6} {r['ap']:>7.4f} {r['ap50']:>7.4f} "
            f"{r['voc07_ap50']:>7.4f} {r['voc10_ap50']:>7.4f}"
        )
    return "\n".join(lines)


def plot_pr_curves(curves, names, per_class, path: Path) -> Path:
    """Precision/recall at IoU 0.5, one line per class with ground truth."""
    import matplotlib  # lazy: matplotlib loads at draw time, Agg chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(6, 5))
    for (rec, prec, npos), name in zip(curves, names):
        if npos == 0:
            continue
        r = torch.cat([torch.zeros(1, dtype=torch.float64), rec]).numpy()
        p = torch.cat([torch.ones(1, dtype=torch.float64), prec]).numpy()
        ax.plot(r, p, label=f"{name} (AP50 {per_class[name]['voc10_ap50']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="PR curves, IoU 0.5")
    if ax.lines:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(cm: torch.Tensor, names, path: Path) -> Path:
    import matplotlib  # lazy: matplotlib loads at draw time, Agg chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")

    ticks, legend = axis_labels([*names, "background"])
    n = len(ticks)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * n, 1 + 0.45 * n))
    ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=7)
    ax.set_yticks(range(n), ticks, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="detection confusion (IoU 0.5)")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    add_legend(fig, legend)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def draw_samples(images, gts, preds, class_names, out_dir, n: int = 8, *, score_threshold: float = 0.25) -> list[Path]:
    """Save up to `n` images with true boxes (green) and predictions (red, 'name score').

    `images`: uint8 tensors [3,H,W] or image file paths; `gts` may be None.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(list(images)[:n]):
        if not isinstance(img, torch.Tensor):
            img = read_image(str(img), mode=ImageReadMode.RGB)
        img = img[:3] if img.shape[0] >= 3 else img.expand(3, -1, -1)
        if gts is not None and len(gts[i]["labels"]):
            img = draw_bounding_boxes(
                img, torch.as_tensor(gts[i]["boxes"]).float().reshape(-1, 4), colors="lime", width=1
            )
        p = preds[i]
        keep = torch.as_tensor(p["scores"]).reshape(-1) >= score_threshold
        if keep.any():
            boxes = torch.as_tensor(p["boxes"]).float().reshape(-1, 4)[keep]
            text = [
                f"{class_names[int(c)]} {float(s):.2f}"
                for c, s in zip(
                    torch.as_tensor(p["labels"]).reshape(-1)[keep], torch.as_tensor(p["scores"]).reshape(-1)[keep]
                )
            ]
            img = draw_bounding_boxes(img, boxes, labels=text, colors="red", width=1)
        path = out / f"sample_{i:03d}.png"
        save_image(img.float() / 255, path)
        paths.append(path)
    return paths
