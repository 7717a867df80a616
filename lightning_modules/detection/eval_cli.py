"""`visionflow detect-eval`: COCO ground truth + COCO results json -> detection metrics.

The metrics code (torch) is imported when the command runs: `visionflow --help` imports this module.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_detect_eval_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("detect-eval", help="mAP (COCO, VOC07, VOC10) of COCO-format detections")
    p.add_argument("--gt", required=True, help="COCO instances json (ground truth)")
    p.add_argument("--pred", required=True, help="COCO results json: [{image_id, category_id, bbox, score}]")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--out", help="folder for PR curves, confusion matrix, AP table (and samples with --images)")
    p.add_argument("--images", help="folder holding the GT's file_name images, to draw samples into --out")
    p.set_defaults(fn=run_detect_eval)
    return p


def run_detect_eval(a: argparse.Namespace) -> None:
    from lightning_modules.detection.cocoio import load_coco_gt, load_coco_results  # lazy: torch (see the docstring)
    from lightning_modules.detection.metrics import draw_samples, evaluate_detections, format_table  # lazy: torch

    gt = load_coco_gt(Path(a.gt))
    pred = load_coco_results(Path(a.pred), gt)
    result = evaluate_detections(gt.items, pred, gt.class_names, out_dir=a.out)
    if a.out and a.images:
        files = [Path(a.images) / f for f in gt.file_names]
        shown = [i for i, f in enumerate(files) if f.is_file()][:8]
        paths = draw_samples(
            [files[i] for i in shown],
            [gt.items[i] for i in shown],
            [pred[i] for i in shown],
            gt.class_names,
            Path(a.out) / "samples",
        )
        result["figures"]["samples"] = [str(p) for p in paths]
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        if result.get("figures"):
            print("\nfigures: " + ", ".join(str(v) for k, v in result["figures"].items() if k != "samples"))
