"""Prepare a classification source (ImageNet or ImageFolder) into litdata chunks of fixed-size uint8 images.

Output (see the contract): `OUT/train`, `OUT/val` litdata dirs of `{"image": uint8 [3,S,S], "label": int}`,
`OUT/manifest.json` (classes, counts, rejected files, train mean/std) and `OUT/preview.png`.
Every file is decoded once; bad files are listed as rejected instead of stopping the run, unless too many are.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from lightning_modules.data.classification_source import ClassificationSource, Labelled, discover, stratified_split
from lightning_modules.data.duplicates import dedupe, hash_files
from lightning_modules.data.images import BadImage, load_chw
from lightning_modules.data.lineage import content_hash, data_version
from lightning_modules.data.prep_settings import CLASSIFICATION
from lightning_modules.data.previews import save_grid
from lightning_modules.data.staging import PRODUCER, check_not_overlapping, staged_output
from lightning_modules.errors import ConfigError, DataError
from lightning_modules.reporting.progress import track

log = logging.getLogger("visionflow")

TARGET_CHUNKS = 64  # many chunks per split: litdata shuffles chunk order, and shards chunks over DDP ranks
MAX_CHUNK_BYTES = 64 * 2**20  # ...but keep each chunk small enough to stream (ImageNet at 64px: ~240 chunks)
PREVIEW_COUNT = 16


def prep_classification(
    src: Path,
    out: Path,
    *,
    image_size: int = CLASSIFICATION.image_size,
    val_fraction: float = CLASSIFICATION.val_fraction,
    max_rejected_fraction: float = CLASSIFICATION.max_rejected_fraction,
    workers: int = CLASSIFICATION.workers,
    seed: int = CLASSIFICATION.seed,
    source_data_version: str | None = None,
    max_image_pixels: int = CLASSIFICATION.max_image_pixels,
) -> dict:
    """Check, resize (shorter side, centre crop) and write `src` as litdata splits under `out`; returns the manifest.

    Raises DataError when the source is unusable (empty class, bad val CSV, too many rejected files);
    a failed run leaves a previous `out` untouched.
    """
    _check_args(image_size, val_fraction, max_rejected_fraction, workers)
    if max_image_pixels <= 0:
        raise ConfigError(f"max_image_pixels must be > 0, got {max_image_pixels}")
    src, out = Path(src).resolve(), Path(out).resolve()
    check_not_overlapping(src, out)  # before reading anything: the swap would delete the source
    source = discover(src)
    if source.val is None:
        train, val = stratified_split(source.train, val_fraction, seed)
    else:
        train, val = source.train, source.val
    # Shuffle once so every chunk mixes classes; litdata only shuffles chunk order and within a few chunks.
    random.Random(seed).shuffle(train)
    test = source.test or []
    total = len(train) + len(val) + len(test) + len(source.refused)
    budget = _RejectBudget(total, max_rejected_fraction)
    for path, reason in source.refused:
        budget.add(path, reason)

    with staged_output(out, source=src) as stage, _pool(workers) as pool:
        digests = hash_files([p for split in (train, val, test) for p, _ in split], pool)
        unique = dedupe({"train": train, "val": val, "test": test}, digests, source.names)
        for path, reason in unique.rejected:
            budget.add(path, reason)
        train, val, test = unique.splits["train"], unique.splits["val"], unique.splits["test"]
        train_split = _write_split(stage, "train", train, image_size, pool, budget, source, max_image_pixels)
        val_split = _write_split(stage, "val", val, image_size, pool, budget, source, max_image_pixels)
        test_split = (
            _write_split(stage, "test", test, image_size, pool, budget, source, max_image_pixels) if test else None
        )
        budget.check_final()
        _check_classes(source, train_split, val_split, src)
        manifest = _manifest(source, image_size, train_split, val_split, budget, source_data_version, test_split)
        manifest["duplicates"], manifest["max_image_pixels"] = unique.counts, max_image_pixels
        content = _content_hash(source, image_size, {"train": train, "val": val, "test": test}, digests, budget)
        manifest["content_hash"], manifest["data_version"] = content, data_version(source_data_version, content)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _save_preview(train_split, source, stage / "preview.png")
    log.info(
        "prepared %s -> %s: %d train, %d val, %d test, %d rejected",
        src,
        out,
        manifest["totals"]["train"],
        manifest["totals"]["val"],
        manifest["totals"].get("test", 0),
        manifest["totals"]["rejected"],
    )
    return manifest


def _check_args(image_size: int, val_fraction: float, max_rejected_fraction: float, workers: int) -> None:
    if not 8 <= image_size <= 4096:
        raise ConfigError(f"image_size must be in 8..4096, got {image_size}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= max_rejected_fraction <= 1.0:
        raise ConfigError(f"max_rejected_fraction must be in [0, 1], got {max_rejected_fraction}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")


# --- writing a split: one task per litdata chunk, in the main process or a pool ---------------------------------


@dataclass
class _ChunkTask:
    index: int  # chunk number within the split: the same files land in the same chunk whatever `workers` is
    items: Labelled
    image_size: int
    chunk_size: int  # the split's chunk size (litdata's merge wants one config for all chunks)
    folder: Path  # the split's litdata folder
    parts: Path  # scratch folder for this split's per-chunk writers
    preview: bool  # send preview samples back (only the first train chunks: train is shuffled, so they vary)


@dataclass
class _ChunkResult:
    written: bool
    counts: np.ndarray  # valid images per class
    sums: np.ndarray  # per-channel sum of pixel values (exact, int64)
    sq_sums: np.ndarray
    rejected: list[tuple[str, str]]
    preview: list[tuple[np.ndarray, int]]
    spares: list[tuple[np.ndarray, int]]


def _write_chunk(task: _ChunkTask, num_classes: int, max_pixels: int) -> _ChunkResult:
    """Decode the task's files and write them as one litdata chunk plus a `{index}.index.json` for the merge."""
    import torch  # lazy: torch, only to write; prep steps import this module
    from litdata.streaming.writer import BinaryWriter  # lazy: litdata imports torch; only writing needs it

    part = task.parts / str(os.getpid())  # one scratch folder per process, reused: folder ops are slow on some disks
    part.mkdir(exist_ok=True)
    writer = BinaryWriter(str(part), chunk_size=task.chunk_size, chunk_index=task.index)
    res = _ChunkResult(False, np.zeros(num_classes, np.int64), np.zeros(3, np.int64), np.zeros(3, np.int64), [], [], [])
    n = 0
    for path, label in task.items:
        try:
            chw = load_chw(path, task.image_size, max_pixels=max_pixels)
        except BadImage as e:
            res.rejected.append((path, str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - a decoder crash on one file is that file's problem, not the run's
            res.rejected.append((path, f"unreadable: {type(e).__name__}: {e}"))
            continue
        writer[n] = {"image": torch.from_numpy(chw), "label": label}
        n += 1
        flat = chw.reshape(3, -1).astype(np.int64)
        res.sums += flat.sum(axis=1)
        res.sq_sums += (flat * flat).sum(axis=1)
        res.counts[label] += 1
        if task.preview:
            _keep_for_preview(res.preview, res.spares, chw, label)
    if n:
        # items <= chunk_size, so done() writes one chunk-<rank>-<index>.bin and one <rank>.index.json.
        for chunk in writer.done():
            os.replace(chunk, task.folder / Path(chunk).name)
        (index,) = part.glob("*.index.json")
        os.replace(index, task.folder / f"{task.index}.index.json")
        res.written = True
    return res


def _keep_for_preview(preview: list, spares: list, chw: np.ndarray, label: int) -> None:
    """One sample per class while there is room; spares fill the grid when there are few classes."""
    if len(preview) < PREVIEW_COUNT and all(label != kept for _, kept in preview):
        preview.append((chw, label))
    elif len(spares) < PREVIEW_COUNT:
        spares.append((chw, label))


def _worker_init() -> None:
    # Forked workers inherit the parent's handlers (Dagster's SIGTERM handler hung steps before): use defaults,
    # so a SIGTERM or Ctrl-C ends them at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for workers > 1 (None: work in this process); always shut down and joined.

    ProcessPoolExecutor rather than multiprocessing.Pool: if a worker dies (OOM killer) it raises
    BrokenProcessPool instead of waiting forever for the lost task.
    """
    if workers <= 1:
        yield None
        return
    import litdata.streaming.writer  # noqa: F401 - imported once here, so forked workers need not import torch
    import torch  # noqa: F401

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(), initializer=_worker_init)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@dataclass
class _SplitResult:
    counts: np.ndarray
    sums: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    sq_sums: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    preview: list[tuple[np.ndarray, int]] = field(default_factory=list)
    spares: list[tuple[np.ndarray, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, chunk: _ChunkResult) -> None:
        self.counts += chunk.counts
        self.sums += chunk.sums
        self.sq_sums += chunk.sq_sums
        for chw, label in chunk.preview + chunk.spares:
            _keep_for_preview(self.preview, self.spares, chw, label)


class _RejectBudget:
    """Collects rejected files; raises as soon as the rejected fraction of all files is certain to be too high."""

    def __init__(self, total: int, max_fraction: float):
        self.total, self.max_fraction, self.rejected = total, max_fraction, []

    def add(self, path: str, reason: str) -> None:
        log.warning("rejected %s: %s", path, reason)
        self.rejected.append({"path": path, "reason": reason})
        if len(self.rejected) > self.max_fraction * self.total:
            self._raise(at_least=True)

    def check_final(self) -> None:
        if len(self.rejected) > self.max_fraction * self.total:
            self._raise(at_least=False)

    def _raise(self, at_least: bool) -> None:
        n = len(self.rejected)
        shown = "; ".join(f"{r['path']} ({r['reason']})" for r in self.rejected[:5])
        more = f"; and {n - 5} more" if n > 5 else ""
        raise DataError(
            Path(self.rejected[0]["path"]).parent,
            f"{'at least ' if at_least else ''}{n} of {self.total} files rejected ({n / self.total:.1%}), more than "
            f"max_rejected_fraction={self.max_fraction:.1%}: {shown}{more}",
        )


def chunk_size_for(n_samples: int, sample_bytes: int) -> int:
    """Samples per chunk: about TARGET_CHUNKS chunks, none over MAX_CHUNK_BYTES."""
    by_count = math.ceil(n_samples / TARGET_CHUNKS)
    by_bytes = max(1, MAX_CHUNK_BYTES // sample_bytes)
    return max(1, min(by_count, by_bytes))


def _write_split(
    stage: Path,
    split: str,
    items: Labelled,
    image_size: int,
    pool: ProcessPoolExecutor | None,
    budget: _RejectBudget,
    source: ClassificationSource,
    max_pixels: int,
) -> _SplitResult:
    from litdata.streaming.writer import BinaryWriter  # lazy: litdata imports torch; only writing needs it

    folder, parts = stage / split, stage / f".parts-{split}"
    folder.mkdir()
    parts.mkdir()
    size = chunk_size_for(len(items), 3 * image_size * image_size)
    tasks = [
        _ChunkTask(k, items[i : i + size], image_size, size, folder, parts, split == "train" and k < 4)
        for k, i in enumerate(range(0, len(items), size))
    ]
    work = partial(_write_chunk, num_classes=len(source.wnids), max_pixels=max_pixels)
    # Results in task order, so the manifest and preview do not depend on `workers`.
    results = pool.map(work, tasks) if pool is not None else map(work, tasks)
    result, written = _SplitResult(counts=np.zeros(len(source.wnids), np.int64)), 0
    for chunk in track(results, f"prep {split}: {len(items)} images in {len(tasks)} chunks", total=len(tasks)):
        for path, reason in chunk.rejected:
            budget.add(path, reason)
        result.add(chunk)
        written += chunk.written
    if result.total == 0:
        raise DataError(source.root, f"no valid {split} image: {len(items)} files listed, none usable")
    # Merge the per-chunk {k}.index.json files (in k order) into the split's index.json.
    BinaryWriter(str(folder), chunk_size=size).merge(num_workers=written)
    shutil.rmtree(parts)
    result.preview = sorted(result.preview + result.spares[: PREVIEW_COUNT - len(result.preview)], key=lambda s: s[1])
    return result


# --- checks, statistics, manifest, preview ---------------------------------------------------------------------


def _check_classes(source: ClassificationSource, train: _SplitResult, val: _SplitResult, src: Path) -> None:
    empty = [w for w, n in zip(source.wnids, train.counts) if n == 0]
    if empty:
        folder = _train_folder(source, empty[0])
        raise DataError(
            folder,
            f"class '{empty[0]}' has no valid training image left after rejecting bad files"
            + (f" (also: {', '.join(empty[1:6])})" if len(empty) > 1 else ""),
        )
    no_val = [w for w, n in zip(source.wnids, val.counts) if n == 0]
    if no_val:
        log.warning("%s: %d classes have no val image (e.g. %s)", src, len(no_val), no_val[0])


def _train_folder(source: ClassificationSource, wnid: str) -> Path:
    label = source.wnids.index(wnid)
    path = next((p for p, lab in source.train if lab == label), None)
    return Path(path).parent if path is not None else source.root / wnid


def mean_std(split: _SplitResult, image_size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale from exact integer sums."""
    n = split.total * image_size * image_size
    mean = split.sums / n
    var = np.maximum(split.sq_sums / n - mean * mean, 0.0)
    return [round(float(m) / 255.0, 6) for m in mean], [round(float(math.sqrt(v)) / 255.0, 6) for v in var]


def _manifest(
    source,
    image_size,
    train: _SplitResult,
    val: _SplitResult,
    budget,
    source_data_version,
    test: _SplitResult | None = None,
) -> dict:
    """The manifest; "test" counts (per class and in totals) only when the source has a test split."""
    mean, std = mean_std(train, image_size)
    classes = [
        {"wnid": w, "name": name, "index": i, "train": int(train.counts[i]), "val": int(val.counts[i])}
        for i, (w, name) in enumerate(zip(source.wnids, source.names))
    ]
    totals = {"train": train.total, "val": val.total, "rejected": len(budget.rejected)}
    if test is not None:
        for c in classes:
            c["test"] = int(test.counts[c["index"]])
        totals["test"] = test.total
    return {
        "producer": PRODUCER,
        "kind": "classification",
        "format": "litdata",
        "image_size": image_size,
        "classes": classes,
        "totals": totals,
        "rejected": budget.rejected,
        "mean": mean,
        "std": std,
        "source": str(source.root.resolve()),
        "source_data_version": source_data_version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _content_hash(
    source: ClassificationSource,
    image_size: int,
    splits: dict[str, Labelled],
    digests: dict[str, str | None],
    budget: _RejectBudget,
) -> str:
    """What the prepared set holds: each kept file's bytes, class and split, plus the size it was stored at."""
    rejected = {r["path"] for r in budget.rejected}
    lines = [
        f"{split}\t{source.wnids[label]}\t{digests.get(path)}"
        for split, items in splits.items()
        for path, label in items
        if path not in rejected
    ]
    return content_hash([f"image_size\t{image_size}", *lines])


def _save_preview(train: _SplitResult, source: ClassificationSource, path: Path) -> None:
    captions = [f"{label}: {source.names[label]}" for _, label in train.preview]
    save_grid([chw for chw, _ in train.preview], captions, path)
