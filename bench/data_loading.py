"""Data-loading benchmark: prep throughput (1 vs 2 processes) and loader throughput (prepared litdata vs ImageFolder).

Makes its own data with the synthetic generator (~2,000 images) in a temporary folder under .cache/, then prints
one table. Bars: prepared format >= 5x faster than ImageFolder; prep >= 1.5x faster with 2 processes.

    .venv/bin/python bench/data_loading.py [--images 2000] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# litdata must write nothing under /tmp or $HOME.
os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(REPO / ".cache" / "litdata"))

BATCH = 64
LOADER_WORKERS = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="train + val images to synthesize")
    parser.add_argument("--epochs", type=int, default=3, help="timed loader epochs (after one warm-up epoch)")
    parser.add_argument("--rounds", type=int, default=5, help="prep runs per setting; the fastest counts")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = parser.parse_args(argv)

    (REPO / ".cache").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-", dir=REPO / ".cache"))
    try:
        rows = run(tmp, args.images, args.epochs, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)
    return 0


def run(tmp: Path, images: int, epochs: int, rounds: int) -> list[tuple[str, float, float]]:
    from lightning_modules.data.imagenet_prep import prep_classification
    from lightning_modules.data.synth import synthesize

    classes = 10
    per_class = max(2, round(images * 0.85 / classes))
    val_per_class = max(1, images // classes - per_class)
    synthesize(tmp / "raw", classes=classes, per_class=per_class, val_per_class=val_per_class, transfer_classes=2,
               transfer_per_class=2, transfer_val_per_class=1, det_train=1, det_val=1, workers=2)
    src = tmp / "raw" / "imagenet"
    files = [p for p in src.rglob("*") if p.is_file() and p.suffix in (".JPEG", ".jpg", ".png")]
    for p in files:  # warm the page cache so the first timed run is not penalised
        p.read_bytes()

    prep_times: dict[int, float] = {}
    for _ in range(rounds):
        for workers in (1, 2):
            out = tmp / f"prepared-{workers}"
            start = time.perf_counter()
            manifest = prep_classification(src, out, workers=workers)
            elapsed = time.perf_counter() - start
            prep_times[workers] = min(prep_times.get(workers, float("inf")), elapsed)
    n_files = manifest["totals"]["train"] + manifest["totals"]["val"] + manifest["totals"]["rejected"]
    prepared = tmp / "prepared-1"

    litdata_rate, n_lit = loader_rate(prepared_loader(prepared), epochs)
    folder_rate, n_folder = loader_rate(imagefolder_loader(src / "train"), epochs)
    assert n_lit == n_folder, (n_lit, n_folder)  # same images on both sides

    p1, p2 = n_files / prep_times[1], n_files / prep_times[2]
    return [
        (f"prep, 1 process ({n_files} files)", p1, 1.0),
        (f"prep, 2 processes ({n_files} files)", p2, p2 / p1),
        (f"ImageFolder+PIL+RandomResizedCrop(64) ({LOADER_WORKERS} workers)", folder_rate, 1.0),
        (f"prepared litdata, uint8 [3,64,64] ({LOADER_WORKERS} workers)", litdata_rate, litdata_rate / folder_rate),
    ]


def prepared_loader(prepared: Path):
    from litdata import StreamingDataLoader

    from lightning_modules.data.streaming import open_split

    dataset = open_split(prepared, "train", shuffle=True, seed=0)
    return StreamingDataLoader(dataset, batch_size=BATCH, num_workers=LOADER_WORKERS, persistent_workers=True)


def imagefolder_loader(train_dir: Path):
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomResizedCrop(64), transforms.ToTensor()])
    dataset = datasets.ImageFolder(str(train_dir), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=LOADER_WORKERS,
                                       persistent_workers=True)


def loader_rate(loader, epochs: int) -> tuple[float, int]:
    """Images per second over `epochs` full passes, after one untimed warm-up pass (worker start-up)."""
    n = sum(len(batch[_key(batch)]) for batch in loader)  # warm-up epoch
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for batch in loader:
            seen += len(batch[_key(batch)])
    return seen / (time.perf_counter() - start), n


def _key(batch):
    return "image" if isinstance(batch, dict) else 0


def print_table(rows: list[tuple[str, float, float]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"{'measurement':<{width}}  {'images/s':>9}  {'ratio':>6}")
    print("-" * (width + 19))
    for name, rate, ratio in rows:
        print(f"{name:<{width}}  {rate:>9.0f}  {ratio:>5.1f}x")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"({cores} CPU cores, load average {load:.1f}; prep bar: >= 1.5x with 2 processes; loader bar: >= 5x)")
    print(f"prep speedup with 2 processes: {rows[1][2]:.1f}x")
    print(f"loader speedup vs ImageFolder: {rows[3][2]:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
