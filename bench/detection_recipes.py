"""The detector's default recipe against its targets (issue 12), on two sets and several seeds.

- look-alike: `visionflow data synth --det-train 600 --det-val 150 --det-test 0 --det-style small` (the
  embedded set of generator 2: small objects, five look-alike shapes), `trainer.max_time=00:00:04:10`,
  target COCO mAP@0.5:0.95 >= 0.16 on its 150 val images (YOLOv8n from scratch: 0.133-0.151 at 160 px);
- shapes: a user-style YOLO set made by bench/shapes_set.py (300 train / 60 val, 3 plain shapes),
  `trainer.max_time=00:00:04:00`, target >= 0.60 (YOLOv8n: 0.36-0.51).

configs/yolov3-cpu.yaml as it is, from the given pretrained backbone, one job at a time:

    .venv/bin/python bench/detection_recipes.py --backbone runs/pretrained_backbone/resnet18/<run>/checkpoints/best.ckpt
        [--sets lookalike shapes] [--seeds 0 1]

Prints one row per run (epochs done, fit seconds, val mAP) and, last, each set's mean against its target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from detection import train_and_score  # bench/detection.py: the same job, scored the same way

ROOT = Path(__file__).resolve().parent.parent
SETS = {
    # name: (budget, target val mAP, how to make the raw set)
    "lookalike": ("00:00:04:10", 0.16, "synth"),
    "shapes": ("00:00:04:00", 0.60, "shapes"),
}


def _cli(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "lightning_modules.cli", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
    )


def prepared_set(name: str, out: Path) -> Path:
    """Make and prepare the set once (reused when already there)."""
    raw, prepared = out / f"{name}-raw", out / name
    if (prepared / "manifest.json").is_file():
        return prepared
    if SETS[name][2] == "synth":
        _cli(
            "data",
            "synth",
            "--out",
            str(raw),
            "--det-train",
            "600",
            "--det-val",
            "150",
            "--det-test",
            "0",
            "--det-style",
            "small",
            "--workers",
            "2",
        )
        source = raw / "detection"
    else:
        subprocess.run([sys.executable, str(ROOT / "bench" / "shapes_set.py"), str(raw)], check=True)
        source = raw
    _cli("data", "prep-detection", str(source), str(prepared), "--format", "yolo")
    return prepared


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", type=Path, required=True, help="the chain's pretrained backbone checkpoint")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "recipes")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sets:
        budget, _target, _ = SETS[name]
        data = prepared_set(name, args.out)
        for seed in args.seeds:
            sets = [f"trainer.max_time={budget}", f"trainer.seed={seed}"]
            r = train_and_score("yolov3", data, args.backbone.resolve(), args.out, sets, "val", f"{name}-seed{seed}")
            rows.append({"set": name, "seed": seed, **r})
            print(
                f"{name:10s} seed {seed}: {r['epochs']:3d} epochs in {r['fit_s']:4.0f} s, "
                f"val mAP {r['test_map']:.4f} (mAP@.5 {r['test_map_50']:.4f}, {r['test_images']} images)",
                flush=True,
            )
    (args.out / "recipes.json").write_text(json.dumps(rows, indent=1))
    for name in args.sets:
        maps = [r["test_map"] for r in rows if r["set"] == name]
        target = SETS[name][1]
        verdict = "reached" if min(maps) >= target else "NOT reached"
        print(f"{name}: val mAP {', '.join(f'{m:.4f}' for m in maps)} (seeds {args.seeds}); target {target}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
