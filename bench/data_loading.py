"""Data-loading benchmark: prep throughput (1 vs 2 processes) and loader throughput (prepared litdata vs ImageFolder).

Makes its own data with the synthetic generator (~2,000 images) in a temporary folder under bench/out/, then
prints one table. The two loaders are compared like for like, at 1 and at 2 loader workers:

- train: both apply the training job's own augmentation (random resized crop to the training size with the job's
  default data.crop_scale_min, then a horizontal flip) and deliver uint8 [N,3,S,S] images + int64 labels. The
  prepared side is the job's own train loader on a CPU (ClassificationDataModule.train_dataloader): the workers
  stack the stored uint8 images and BatchAugment draws a crop and flip per image and resamples the whole batch
  in one call (AugmentingCollate). The ImageFolder side decodes with PIL (RGB) and applies the same torchvision
  v2 transforms per sample, then PILToTensor (it crops the full-size original; the prepared side crops the
  stored S-pixel image, as the job does).
- decode-only: no augmentation. Prepared side as the job's val path (EvalTransform, a no-op at the prepared size);
  ImageFolder side: PIL decode + resize shorter side + centre crop to the same size (what prep does), uint8.

Both loaders use the job's loader settings (batch 64, shuffle, persistent workers: started once, on both
sides). Each figure is the median (and min-max) over alternating rounds; a round times every
setting once, in reversed order every other round. Speedups are medians of the per-round ratios. Bars: prepared
format >= 5x faster than ImageFolder (train, at 1 and at 2 workers); prep >= 1.5x faster with 2 processes. Raw
figures go to bench/out/data_loading.json.

    .venv/bin/python bench/data_loading.py [--images 2000] [--epochs 3] [--rounds 5] [--prep-rounds 5]
    .venv/bin/python bench/data_loading.py --quick     # smoke run, < 1 min: small data, 1 epoch, 3 rounds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# litdata must write nothing under /tmp or $HOME.
os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(REPO / ".cache" / "litdata"))

OUT = REPO / "bench" / "out"
BATCH = 64
WORKERS = (1, 2)
MODES = ("train", "decode-only")
SIDES = ("ImageFolder", "prepared")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="train + val images to synthesize")
    parser.add_argument("--epochs", type=int, default=3, help="timed loader epochs per measurement (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating loader rounds (median and min-max)")
    parser.add_argument("--prep-rounds", type=int, default=5, help="prep runs per setting; the fastest counts")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 images, 1 epoch, 3 rounds, 1 prep round")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.rounds, args.prep_rounds = 300, 1, 3, 1

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="data-loading-", dir=OUT))
    try:
        result = run(tmp, args.images, args.epochs, args.rounds, args.prep_rounds)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result["args"] = vars(args)
    (OUT / "data_loading.json").write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    return 0


def run(tmp: Path, images: int, epochs: int, rounds: int, prep_rounds: int) -> dict:
    from lightning_modules.config import DataConfig
    from lightning_modules.data.imagenet_prep import prep_classification
    from lightning_modules.data.streaming import read_prepared
    from lightning_modules.data.synth import synthesize

    classes = 10
    per_class = max(2, round(images * 0.85 / classes))
    val_per_class = max(1, images // classes - per_class)
    synthesize(
        tmp / "raw",
        classes=classes,
        per_class=per_class,
        val_per_class=val_per_class,
        transfer_classes=2,
        transfer_per_class=2,
        transfer_val_per_class=1,
        det_train=1,
        det_val=1,
        workers=2,
    )
    src = tmp / "raw" / "imagenet"
    files = [p for p in src.rglob("*") if p.is_file() and p.suffix in (".JPEG", ".jpg", ".png")]
    for p in files:  # warm the page cache so the first timed run is not penalised
        p.read_bytes()

    prep_times: dict[int, list[float]] = {w: [] for w in WORKERS}
    for _ in range(prep_rounds):
        for workers in WORKERS:
            out = tmp / f"prepared-{workers}"
            start = time.perf_counter()
            manifest = prep_classification(src, out, workers=workers)
            prep_times[workers].append(time.perf_counter() - start)
    n_files = manifest["totals"]["train"] + manifest["totals"]["val"] + manifest["totals"]["rejected"]
    prepared = tmp / "prepared-1"

    # The job's training size (data.image_size unset: the prepared size) and its default crop scale.
    size = read_prepared(prepared).image_size
    scale_min = DataConfig().crop_scale_min
    settings = [(mode, w, side) for mode in MODES for w in WORKERS for side in SIDES]
    rates: dict[str, list[float]] = {_key(*s): [] for s in settings}
    counts: dict[str, int] = {}
    for r in range(rounds):
        for s in settings if r % 2 == 0 else reversed(settings):
            mode, workers, side = s
            make = prepared_loader if side == "prepared" else imagefolder_loader
            loader = make(prepared if side == "prepared" else src / "train", mode, workers, size, scale_min)
            rate, n = loader_rate(loader, epochs, size)
            del loader
            gc.collect()
            rates[_key(*s)].append(rate)
            counts[_key(*s)] = n
    # The same images on both sides (the job's train loader drops the last partial batch: drop_last).
    assert max(counts.values()) - min(counts.values()) < BATCH, counts

    return {
        "files": n_files,
        "train_images": max(counts.values()),
        "image_size": size,
        "crop_scale_min": scale_min,
        "batch": BATCH,
        "prep_seconds": {str(w): t for w, t in prep_times.items()},
        "loader_images_per_s": rates,
    }


def _key(mode: str, workers: int, side: str) -> str:
    return f"{mode}/{workers}w/{side}"


def prepared_loader(prepared: Path, mode: str, workers: int, size: int, scale_min: float):
    """The job's train loader (mode train) or its val-style path (decode-only) over the prepared litdata split."""
    from litdata import StreamingDataLoader

    from lightning_modules.classification.datamodule import ClassificationDataModule, EvalTransform, collate
    from lightning_modules.config import DataConfig
    from lightning_modules.data.streaming import open_split

    if mode == "train":
        cfg = DataConfig(batch_size=BATCH, num_workers=workers, image_size=size, crop_scale_min=scale_min)
        dm = ClassificationDataModule(prepared, cfg, seed=0, on_gpu=False)
        dm.setup("fit")
        return dm.train_dataloader()
    dataset = open_split(prepared, "train", shuffle=True, seed=0, transform=EvalTransform(size))
    return StreamingDataLoader(
        dataset, batch_size=BATCH, num_workers=workers, collate_fn=collate, persistent_workers=True
    )


def imagefolder_loader(train_dir: Path, mode: str, workers: int, size: int, scale_min: float):
    """torchvision ImageFolder + PIL with the same transforms, delivering the same uint8 tensors."""
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    if mode == "train":
        ops = [v2.RandomResizedCrop(size, scale=(scale_min, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:  # what prep does once: resize the shorter side, centre crop
        ops = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    dataset = datasets.ImageFolder(str(train_dir), transform=v2.Compose([*ops, v2.PILToTensor()]))
    return torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=True
    )


def loader_rate(loader, epochs: int, size: int) -> tuple[float, int]:
    """Images per second over `epochs` full passes, after one untimed warm-up pass (page cache, first imports).

    Workers are persistent on both sides (as in the job): the warm-up epoch starts them."""
    import torch

    n = 0
    for images, labels in loader:  # warm-up epoch; both sides must deliver the same batch format
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, size, size), (images.dtype, images.shape)
        assert labels.dtype == torch.int64 and len(labels) == len(images)
        n += len(images)
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for images, _labels in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start), n


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def speedup(result: dict, mode: str, workers: int) -> tuple[float, float, float]:
    """Median and min-max of the per-round ratios prepared / ImageFolder."""
    r = result["loader_images_per_s"]
    ratios = [p / f for p, f in zip(r[_key(mode, workers, "prepared")], r[_key(mode, workers, "ImageFolder")])]
    return _spread(ratios)


def print_report(result: dict) -> None:
    size, smin, n_files = result["image_size"], result["crop_scale_min"], result["files"]
    rows: list[tuple[str, str, str, str]] = []
    prep = {int(w): [n_files / t for t in ts] for w, ts in result["prep_seconds"].items()}
    best1, best2 = max(prep[1]), max(prep[2])
    for w, best in ((1, best1), (2, best2)):
        rows.append(
            (
                f"prep, {w} process{'es' if w > 1 else ''} ({n_files} files), fastest",
                f"{best:.0f}",
                f"{min(prep[w]):.0f}-{max(prep[w]):.0f}",
                f"{best / best1:.1f}x",
            )
        )
    what = {
        "train": (f"RandomResizedCrop({size}, scale=({smin}, 1)) + flip", "stack + BatchAugment in the workers"),
        "decode-only": (f"Resize({size}) + CenterCrop({size})", "EvalTransform, no-op"),
    }
    for mode in MODES:
        for w in WORKERS:
            for side in SIDES:
                med, lo, hi = _spread(result["loader_images_per_s"][_key(mode, w, side)])
                if side == "ImageFolder":
                    name, ratio = f"{mode}: ImageFolder+PIL, {what[mode][0]} ({w}w)", "1.0x"
                else:
                    s_med, s_lo, s_hi = speedup(result, mode, w)
                    name, ratio = (
                        f"{mode}: prepared litdata, {what[mode][1]} ({w}w)",
                        f"{s_med:.1f}x ({s_lo:.1f}-{s_hi:.1f})",
                    )
                rows.append((name, f"{med:.0f}", f"{lo:.0f}-{hi:.0f}", ratio))

    heads = ("measurement", "images/s", "min-max", "ratio (min-max)")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    print(line(heads))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for row in rows:
        print(line(row))
    a = result["args"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"(loader: {result['train_images']} train images, batch {result['batch']}, uint8 [3,{size},{size}] on both "
        f"sides; median over {a['rounds']} alternating rounds of {a['epochs']} epoch(s) after a warm-up epoch; "
        f"prep: fastest of {a['prep_rounds']})"
    )
    print(
        f"({cores} CPU cores, load average {load:.1f}; prep bar: >= 1.5x with 2 processes; "
        f"loader bar: >= 5x, train, at 1 and at 2 workers)"
    )
    print(f"prep speedup with 2 processes: {best2 / best1:.1f}x")
    print(f"decode-only speedup vs ImageFolder: {speedup(result, 'decode-only', 2)[0]:.1f}x")
    train = {w: speedup(result, "train", w)[0] for w in WORKERS}
    print("loader speedup vs ImageFolder by workers: " + ", ".join(f"{w}w {x:.1f}x" for w, x in train.items()))
    print(f"loader speedup vs ImageFolder: {min(train.values()):.1f}x")  # the lower of the two


if __name__ == "__main__":
    sys.exit(main())
