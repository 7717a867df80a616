"""Deterministic generator of the embedded data: an ImageNet-layout classification set, a few-shot
transfer set with other categories, and a detection set in YOLO and COCO form.

Each image comes from its own random generator seeded by (seed, set, index), so the output is
byte-identical for a seed whatever the number of worker processes. Drawing is in `synth_draw`,
the class catalogues in `synth_classes`.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lightning_modules.data import synth_draw
from lightning_modules.data.staging import staged_output
from lightning_modules.data.synth_classes import (
    IMAGENET_SHAPES,
    TRANSFER_SHAPES,
    ClassSpec,
    make_classes,
    make_wnids,
)
from lightning_modules.data.synth_detection import write_detection
from lightning_modules.errors import ConfigError, DataError
from lightning_modules.reporting.progress import track

SUMMARY_FILE = "synth.json"  # marks `out` as generated, so a rerun may replace it
# Bumped when the default embedded data changes (2: a held-out detection test split; 3: detection
# 600/150/150 images with objects sized for the detector's input; 4: detection objects are the first
# ImageNet-style classes, each with its own look), so `make run` regenerates data it generated with an
# older version (bootstrap.ensure_default_data).
GENERATOR_VERSION = 4
DETECTION_CLASSES = 5
SETS = ("imagenet", "transfer", "detection")
# Stream ids for the per-image generators; never renumber (it would change every image).
_SET_ID = {
    "imagenet/train": 1,
    "imagenet/val": 2,
    "transfer/train": 3,
    "transfer/val": 4,
    "detection/train": 5,
    "detection/val": 6,
    "transfer/test": 7,
    "imagenet/test": 8,
    "detection/test": 9,
}
_CATALOGUE_ID = {"imagenet": 100, "wnids": 101, "transfer": 102, "val_order": 103, "dirt": 104, "background": 105}
DIRT_KINDS = ("grayscale", "cmyk", "png")


def synthesize(
    out: Path,
    *,
    classes: int = 10,
    per_class: int = 60,
    val_per_class: int = 12,
    transfer_classes: int = 5,
    transfer_per_class: int = 12,
    transfer_val_per_class: int = 20,
    det_train: int = 600,
    det_val: int = 150,
    det_test: int = 150,
    det_style: str = "mixed",
    seed: int = 0,
    workers: int = 1,
    transfer_test_per_class: int = 20,
    test_per_class: int = 0,
) -> dict:
    """Write `out/imagenet`, `out/transfer`, `out/detection` and `out/synth.json`; return the summary.

    Held-out test splits (never used for model selection) go to `transfer/test/<class>/`,
    `detection/images/test/` (with its labels, `test:` in data.yaml and instances_test.json) and, when
    test_per_class > 0, `imagenet/test/<wnid>/`. They come from their own random streams, so the
    train/val images of a seed are the same bytes with or without them.
    """
    out = Path(out)
    _check_args(
        classes=classes,
        per_class=per_class,
        transfer_classes=transfer_classes,
        transfer_per_class=transfer_per_class,
        det_train=det_train,
        workers=workers,
    )
    _check_args(
        minimum=0,
        val_per_class=val_per_class,
        transfer_val_per_class=transfer_val_per_class,
        det_val=det_val,
        det_test=det_test,
        seed=seed,
        transfer_test_per_class=transfer_test_per_class,
        test_per_class=test_per_class,
    )
    if det_style not in synth_draw.DETECTION_STYLES:
        raise ConfigError(
            f"synthesize: det_style {det_style!r}; choose one of {', '.join(synth_draw.DETECTION_STYLES)}"
        )
    _refuse_foreign(out)
    specs = make_classes(classes, IMAGENET_SHAPES, _rng(seed, "imagenet"))
    wnids = make_wnids(classes, _rng(seed, "wnids"))
    t_specs = make_classes(transfer_classes, TRANSFER_SHAPES, _rng(seed, "transfer"))

    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        # _refuse_foreign checked above that these folders are generated data (synth.json beside them).
        dirs = {name: stack.enter_context(staged_output(out / name, may_replace=lambda _: True)) for name in SETS}
        pool = stack.enter_context(_pool(workers)) if workers > 1 else None
        run = partial(_run, pool=pool, seed=seed, workers=workers)
        summary = {
            "generator": GENERATOR_VERSION,
            "seed": seed,
            "imagenet": _write_imagenet(
                dirs["imagenet"], specs, wnids, per_class, val_per_class, seed, run, test_per_class
            ),
            "transfer": _write_transfer(
                dirs["transfer"], t_specs, transfer_per_class, transfer_val_per_class, run, transfer_test_per_class
            ),
            "detection": write_detection(
                dirs["detection"],
                {"train": det_train, "val": det_val, "test": det_test},
                {s: _SET_ID[f"detection/{s}"] for s in ("train", "val", "test")},
                lambda set_id: _rng(seed, "background", set_id),
                run,
                det_style,
                detection_classes(specs, seed),
            ),
            "classes": [{"wnid": w, "name": s.name} for w, s in zip(wnids, specs, strict=True)],
            "transfer_classes": [s.folder for s in t_specs],
        }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def detection_classes(specs: list[ClassSpec], seed: int) -> list[ClassSpec]:
    """The detection set's classes: the first DETECTION_CLASSES ImageNet-style classes, drawn with their looks,
    so the pretrained backbone knows them (as VOC's classes are ImageNet's). With fewer ImageNet-style classes
    (tiny test sets) they come from a catalogue of DETECTION_CLASSES made the same way."""
    if len(specs) >= DETECTION_CLASSES:
        return specs[:DETECTION_CLASSES]
    return make_classes(DETECTION_CLASSES, IMAGENET_SHAPES, _rng(seed, "imagenet"))


# --- orchestration ----------------------------------------------------------------------------


def _check_args(minimum: int = 1, **values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or v < minimum:
            raise ConfigError(f"synthesize: {name} must be an integer >= {minimum}, got {v!r}")


def _refuse_foreign(out: Path) -> None:
    """Only replace folders this generator made: never delete someone's real dataset."""
    if (out / SUMMARY_FILE).exists():
        return
    for name in SETS:
        if (out / name).exists():
            raise DataError(
                out / name, f"exists but {out / SUMMARY_FILE} does not; not generated data, not replacing it"
            )


def _rng(seed: int, what: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, _CATALOGUE_ID[what], *more])


def _pool(workers: int):
    # "spawn": safe even when the caller (Dagster, a web server) has threads running.
    return multiprocessing.get_context("spawn").Pool(workers)


def _run(
    tasks: Iterable[tuple],
    desc: str,
    fn: Callable,
    *,
    total: int,
    pool: Any,
    seed: int,
    workers: int,
    keep: bool = True,
) -> list:
    """Apply `fn(task, seed=...)` to every task, in order, in the pool when there is one.

    `tasks` may be a generator (1,000 classes x 1,300 images never sit in memory as one list);
    with `keep=False` the results are dropped as they come.
    """
    f = partial(fn, seed=seed)
    if pool is None or total < 2:
        results = map(f, tasks)
    else:
        results = pool.imap(f, tasks, chunksize=max(1, min(32, total // (4 * workers))))
    kept = []
    for r in track(results, desc, total=total):
        if keep:
            kept.append(r)
    return kept


# --- classification sets ----------------------------------------------------------------------


def _pick_dirt(n: int, rng: np.random.Generator, *, guarantee: bool) -> list[str | None]:
    """Which of n images are saved as grayscale JPEG, CMYK JPEG or PNG-named-.JPEG (~1% each)."""
    k = round(0.01 * n)
    if guarantee and n >= 30:
        k = max(k, 1)
    k = min(k, n // 3)
    dirt: list[str | None] = [None] * n
    chosen = rng.choice(n, size=3 * k, replace=False) if k else []
    for j, i in enumerate(chosen):
        dirt[int(i)] = DIRT_KINDS[j // k]
    return dirt


def _save(img, path: Path, dirt: str | None = None) -> None:
    if dirt == "grayscale":
        img.convert("L").save(path, "JPEG", quality=synth_draw.JPEG_QUALITY)
    elif dirt == "cmyk":
        img.convert("CMYK").save(path, "JPEG", quality=synth_draw.JPEG_QUALITY)
    elif dirt == "png":
        img.save(path, "PNG")
    else:
        img.save(path, "JPEG", quality=synth_draw.JPEG_QUALITY)


def _render_classification(task: tuple, *, seed: int) -> tuple[int, int, int, int]:
    """Worker: draw one image of `spec`, save it; return its object box (x1, y1, x2, y2)."""
    set_id, index, path, spec, dirt = task
    img, box = synth_draw.classification_image(spec, np.random.default_rng([seed, set_id, index]))
    _save(img, Path(path), dirt)
    return box


def _write_imagenet(
    root: Path,
    specs: list[ClassSpec],
    wnids: list[str],
    per_class: int,
    val_per_class: int,
    seed: int,
    run: Callable,
    test_per_class: int = 0,
) -> dict:
    n_train = len(specs) * per_class
    dirt_rng = _rng(seed, "dirt")
    train_dirt = _pick_dirt(n_train, dirt_rng, guarantee=True)
    for wnid in wnids:
        (root / "train" / wnid).mkdir(parents=True)

    def train_path(i: int) -> str:
        wnid = wnids[i // per_class]
        return f"train/{wnid}/{wnid}_{i % per_class + 1}.JPEG"

    tasks = (
        (_SET_ID["imagenet/train"], i, str(root / train_path(i)), specs[i // per_class], train_dirt[i])
        for i in range(n_train)
    )
    run(tasks, "synth imagenet/train", _render_classification, total=n_train, keep=False)

    # Validation: one flat folder, classes interleaved, boxes in the Kaggle LOC csv.
    (root / "val").mkdir()
    labels = _rng(seed, "val_order").permutation(np.repeat(np.arange(len(specs)), val_per_class))
    val_dirt = _pick_dirt(len(labels), dirt_rng, guarantee=False)
    ids = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(len(labels))]
    val_tasks = [
        (_SET_ID["imagenet/val"], i, str(root / "val" / f"{ids[i]}.JPEG"), specs[int(c)], val_dirt[i])
        for i, c in enumerate(labels)
    ]
    boxes = run(val_tasks, "synth imagenet/val", _render_classification, total=len(val_tasks))
    rows = [f"{ids[i]},{wnids[int(c)]} {' '.join(str(v) for v in boxes[i])}" for i, c in enumerate(labels)]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(r + "\n" for r in rows))
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {s.name}, {s.other_name}\n" for w, s in zip(wnids, specs, strict=True))
    )
    n_test = _write_class_folders(
        root / "test", "imagenet/test", specs, wnids, test_per_class, run, lambda wnid, k: f"{wnid}_test_{k + 1}.JPEG"
    )
    dirt = {kind: [train_path(i) for i, d in enumerate(train_dirt) if d == kind] for kind in DIRT_KINDS}
    return {
        "classes": len(specs),
        "train": n_train,
        "val": len(labels),
        **({"test": n_test} if n_test else {}),
        "dirt": {kind: len(paths) for kind, paths in dirt.items()},
        "dirt_examples": {kind: paths[:3] for kind, paths in dirt.items()},
    }


def _write_transfer(
    root: Path, specs: list[ClassSpec], per_class: int, val_per_class: int, run: Callable, test_per_class: int = 0
) -> dict:
    counts = {}
    folders = [s.folder for s in specs]
    for split, n in (("train", per_class), ("val", val_per_class), ("test", test_per_class)):
        if split == "test" and n == 0:
            continue
        counts[split] = _write_class_folders(
            root / split, f"transfer/{split}", specs, folders, n, run, lambda folder, k: f"{k + 1:04d}.jpg"
        )
    return {"classes": len(specs), **counts}


def _write_class_folders(
    root: Path,
    set_name: str,
    specs: list[ClassSpec],
    folders: list[str],
    n: int,
    run: Callable,
    name: Callable[[str, int], str],
) -> int:
    """n clean images per class into root/<folder>/ (ImageFolder), drawn from the set's own stream."""
    if n == 0:
        return 0
    tasks = []
    for c, (spec, folder_name) in enumerate(zip(specs, folders, strict=True)):
        folder = root / folder_name
        folder.mkdir(parents=True)
        for k in range(n):
            tasks.append((_SET_ID[set_name], c * n + k, str(folder / name(folder_name, k)), spec, None))
    run(tasks, f"synth {set_name}", _render_classification, total=len(tasks))
    return len(tasks)
