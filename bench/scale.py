"""Cost that grows linearly: synth, prep and one training epoch at ImageNet's 1,000 classes, three sizes.

For 10, 20 and 40 images per class (10k-40k train images, plus 2 val images per class):
1. `visionflow data synth` (2 workers): images/s;
2. `prep-imagenet` with 1 and with 2 worker processes: images/s and peak RSS (the main process and the
   largest worker; a streaming prep stays flat however large the set);
3. one training epoch of the chain's pretraining job (configs/pretrain-cpu.yaml: ResNet-18 at half width,
   32 px) on the prepared set: train images/s, peak RSS, and val top-1/top-5 over the 1,000 classes
   (after one epoch they sit near chance, 0.1% and 0.5%; the check is that they are computed over all
   classes and every val image).
Each measurement runs in its own process (its peak RSS is its own). Bars: per-image cost of prep and of
the epoch within 15% across the sizes (the largest over the smallest images/s >= 0.87); prep's peak RSS
within 15% across the sizes. Results go to bench/out/scale.json and a table.

    .venv/bin/python bench/scale.py [--per-class 10 20 40] [--classes 1000]
    .venv/bin/python bench/scale.py --classes 100 --per-class 4 8     # smoke run, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(REPO / ".cache" / "litdata"))
OUT = REPO / "bench" / "out"
VAL_PER_CLASS = 2
BAR = 0.87  # within 15%: the largest size's images/s over the smallest's


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, nargs="+", default=[10, 20, 40])
    p.add_argument("--keep", action="store_true", help="keep the generated and prepared sets")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="scale-", dir=OUT))
    rows = []
    try:
        for per_class in args.per_class:
            rows.append(measure_size(tmp / f"n{per_class}", args.classes, per_class))
            if not args.keep:
                shutil.rmtree(tmp / f"n{per_class}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {"classes": args.classes, "rows": rows, "load_average": os.getloadavg()[0], "cores": os.cpu_count()}
    result["verdict"] = verdict(rows)
    (OUT / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


def measure_size(root: Path, classes: int, per_class: int) -> dict:
    """Synth, prep (1 and 2 workers) and one epoch at one size, each in its own process."""
    row: dict = {"per_class": per_class, "train_images": classes * per_class}
    row["synth"] = run_child("synth", str(root / "raw"), str(classes), str(per_class))
    for workers in (1, 2):
        row[f"prep_{workers}w"] = run_child(
            "prep", str(root / "raw" / "imagenet"), str(root / f"p{workers}"), str(workers)
        )
    row["epoch"] = run_child("epoch", str(root / "p2"), str(root / "run"))
    return row


def run_child(*what: str) -> dict:
    """Run one measurement in a fresh interpreter; it prints one JSON line last."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *what],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(what)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(what: list[str]) -> int:
    """One measurement; prints {seconds, images_per_s, rss_mb, children_rss_mb, ...} as its last line."""
    kind, *rest = what
    start = time.perf_counter()
    extra: dict = {}
    if kind == "synth":
        from lightning_modules.data.synth import synthesize

        out, classes, per_class = Path(rest[0]), int(rest[1]), int(rest[2])
        synthesize(
            out,
            classes=classes,
            per_class=per_class,
            val_per_class=VAL_PER_CLASS,
            transfer_classes=2,
            transfer_per_class=2,
            transfer_val_per_class=1,
            transfer_test_per_class=0,
            det_train=1,
            det_val=0,
            det_test=0,
            workers=2,
        )
        images = classes * (per_class + VAL_PER_CLASS)
    elif kind == "prep":
        from lightning_modules.data.imagenet_prep import prep_classification

        manifest = prep_classification(Path(rest[0]), Path(rest[1]), image_size=32, workers=int(rest[2]))
        images = manifest["totals"]["train"] + manifest["totals"]["val"]
    elif kind == "epoch":
        images, extra = train_epoch(Path(rest[0]), Path(rest[1]))
    else:
        raise SystemExit(f"unknown measurement {kind}")
    seconds = extra.pop("fit_seconds", None) or time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "images": images,
                "images_per_s": images / seconds,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                **extra,
            }
        )
    )
    return 0


def train_epoch(prepared: Path, run_dir: Path) -> tuple[int, dict]:
    """One epoch of the pretraining job (in this process, as `visionflow train` runs it alone)."""
    from lightning_modules.train import main as train_main

    shutil.rmtree(run_dir, ignore_errors=True)
    args = [str(REPO / "configs" / "pretrain-cpu.yaml"), "--data", str(prepared), "--out", str(run_dir)]
    for s in (
        "trainer.max_epochs=1",
        "optim.schedule=cosine",  # onecycle needs more than one epoch of warm-up
        "optim.warmup_epochs=0",
        f"tracking.tracking_uri=sqlite:///{run_dir.parent / 'mlflow.db'}",
        "tracking.log_checkpoint=false",
    ):
        args += ["--set", s]
    code = train_main(args)
    if code:
        raise SystemExit(f"training failed with exit code {code}")
    result = json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    train = json.loads((prepared / "manifest.json").read_text())["totals"]["train"]
    return train, {
        "fit_seconds": result["fit_seconds_this_attempt"],
        "val_acc1": m["val/acc1"],
        "val_acc5": m["val/acc5"],
        "val_images": m.get("val/images"),
        "num_classes": result.get("num_classes"),
    }


def verdict(rows: list[dict]) -> dict:
    first, last = rows[0], rows[-1]

    def ratio(key: str) -> float:
        return last[key]["images_per_s"] / first[key]["images_per_s"]

    rss = [r["prep_2w"]["rss_mb"] for r in rows] + [r["prep_1w"]["rss_mb"] for r in rows]
    return {
        "synth_ratio": ratio("synth"),
        "prep_1w_ratio": ratio("prep_1w"),
        "prep_2w_ratio": ratio("prep_2w"),
        "epoch_ratio": ratio("epoch"),
        "prep_rss_spread": max(rss) / min(rss),
        "linear": all(ratio(k) >= BAR for k in ("prep_1w", "prep_2w", "epoch")) and max(rss) / min(rss) <= 1.15,
    }


def print_table(result: dict) -> None:
    heads = ("images/class", "train imgs", "synth img/s", "prep 1w img/s", "prep 2w img/s", "prep RSS MB (1w/2w)")
    heads += ("epoch img/s", "epoch RSS MB", "val top-1", "val top-5", "val imgs")
    rows = []
    for r in result["rows"]:
        e = r["epoch"]
        rows.append(
            (
                str(r["per_class"]),
                str(r["train_images"]),
                f"{r['synth']['images_per_s']:.0f}",
                f"{r['prep_1w']['images_per_s']:.0f}",
                f"{r['prep_2w']['images_per_s']:.0f}",
                f"{r['prep_1w']['rss_mb']:.0f}/{r['prep_2w']['rss_mb']:.0f}",
                f"{e['images_per_s']:.0f}",
                f"{e['rss_mb']:.0f}",
                f"{e['val_acc1']:.4f}",
                f"{e['val_acc5']:.4f}",
                f"{e['val_images']:.0f}" if e.get("val_images") is not None else "?",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    print("  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    v = result["verdict"]
    print(
        f"({result['classes']} classes, 32 px; {result['cores']} cores, load average {result['load_average']:.1f}; "
        f"bar: largest/smallest images/s >= {BAR} for prep and the epoch, prep RSS spread <= 1.15)"
    )
    print(
        f"per-image cost, largest vs smallest size: synth {v['synth_ratio']:.2f}, prep 1w {v['prep_1w_ratio']:.2f}, "
        f"prep 2w {v['prep_2w_ratio']:.2f}, epoch {v['epoch_ratio']:.2f}; prep RSS spread {v['prep_rss_spread']:.2f}"
    )
    print(f"cost grows linearly: {'yes' if v['linear'] else 'NO'}")


if __name__ == "__main__":
    sys.exit(main())
