"""YOLO v1 / v2 / v3 at their default size and budget: cost per image, training speed, held-out mAP.

For each version: forward GFLOPs per image at the config's input size (torch's FlopCounter, 2 x
multiply-adds), the training job run as `make run` runs it (configs/<version>-cpu.yaml, from the given
pretrained backbone, one job at a time), its training images per second, and COCO mAP@[.5:.95] and
mAP@0.5 of its best checkpoint on the prepared set's held-out test split (never used for selection).

    .venv/bin/python bench/detection.py --data prepared/detection \\
        --backbone runs/pretrained_backbone/resnet18/<run>/checkpoints/best.ckpt [--versions yolov3]
        [--set trainer.max_time=00:00:04:00]

Prints one row per version; the last line is the table's summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def forward_gflops(config: Path, data: Path) -> float:
    """GFLOPs of one forward pass of the config's detector at its input size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_modules.config import load_config
    from lightning_modules.detection.data import anchors_for, read_prepared_detection
    from lightning_modules.detection.models import build_detector, config_options

    cfg, info = load_config(config), read_prepared_detection(data)
    size = cfg.data.image_size or 416
    d = cfg.detection
    net = build_detector(
        d.version,
        cfg.model.name,
        len(info.classes),
        anchors_for(info, d.version, size),
        width=cfg.model.width,
        small_input=cfg.model.small_input,
        stem_stride=cfg.model.stem_stride,
        image_size=size,
        **config_options(d),
    ).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.zeros(1, 3, size, size))  # one small CPU forward pass
    return counter.get_total_flops() / 1e9


def train_and_score(
    version: str, data: Path, backbone: Path | None, out: Path, sets: list[str], split: str = "test", name: str = ""
) -> dict:
    """Train `version`'s CPU config on `data` (into out/NAME, default the version) and score `split`."""
    config = ROOT / "configs" / f"{version}-cpu.yaml"
    run_dir = out / (name or version)
    cmd = [sys.executable, "-m", "lightning_modules.train", str(config), "--data", str(data), "--out", str(run_dir)]
    cmd += ["--set", f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}", "--set", "tracking.log_checkpoint=false"]
    if backbone:
        cmd += ["--set", f"model.pretrained_checkpoint={backbone}"]
    for s in sets:
        cmd += ["--set", s]
    done = run_dir / "result.json"
    if not done.is_file():  # a finished job is reused: rerun with another --out to train again
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(done.read_text())
    scored = out / f"{name or version}-{split}"
    subprocess.run(
        [sys.executable, "-m", "lightning_modules.cli", "evaluate", result["best_checkpoint"], "--data", str(data)]
        + ["--split", split, "--out", str(scored)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    metrics = json.loads((scored / "metrics.json").read_text())
    train_images = json.loads((data / "manifest.json").read_text())["counts"]["train"]["images"]
    return {
        "version": version,
        "gflops": forward_gflops(config, data),
        "epochs": result["epochs"],
        "fit_s": result["fit_seconds_this_attempt"],
        "images_per_s": train_images * result["epochs"] / result["fit_seconds_this_attempt"],
        "test_map": metrics["map"],
        "test_map_50": metrics["map_50"],
        "test_images": metrics["n"],
        "split": split,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "prepared" / "detection")
    p.add_argument("--backbone", type=Path, default=None, help="pretrained backbone checkpoint (else from scratch)")
    p.add_argument("--versions", nargs="+", default=["yolov1", "yolov2", "yolov3"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every job")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "detection")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [train_and_score(v, args.data.resolve(), args.backbone, args.out, args.set) for v in args.versions]
    header = ("version", "GFLOPs/img", "epochs", "fit s", "img/s", "test mAP", "mAP@.5")
    print("{:8s} {:>10s} {:>6s} {:>6s} {:>6s} {:>8s} {:>7s}".format(*header))
    for r in rows:
        print(
            f"{r['version']:8s} {r['gflops']:10.3f} {r['epochs']:6d} {r['fit_s']:6.0f} {r['images_per_s']:6.1f} "
            f"{r['test_map']:8.4f} {r['test_map_50']:7.4f}"
        )
    (args.out / "detection.json").write_text(json.dumps(rows, indent=1))
    best = max(rows, key=lambda r: r["test_map"])
    print(f"best test mAP: {best['version']} {best['test_map']:.4f} on {best['test_images']} held-out images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
