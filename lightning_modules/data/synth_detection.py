"""The synthetic detection set: scenes of filled shapes on noisy backgrounds, as YOLO labels + data.yaml
and COCO json, one split at a time; ~10% background images (some without a label file). Each image is
drawn from its own seeded stream, so the bytes are the same whatever the number of worker processes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lightning_modules.data import synth_draw
from lightning_modules.data.synth_classes import DETECTION_SHAPES, ClassSpec


def render_detection(task: tuple, *, seed: int) -> tuple[int, int, list]:
    """Worker: draw one scene, save image and YOLO label file; return (width, height, [(cls, box)])."""
    set_id, index, img_path, label_path, label_mode, style, classes = task
    rng = np.random.default_rng([seed, set_id, index])
    n = 0 if label_mode != "objects" else int(rng.integers(1, 7))
    img, labels = synth_draw.detection_image(n, classes, rng, style)
    img.save(img_path, "JPEG", quality=synth_draw.JPEG_QUALITY)
    w, h = img.size
    if label_mode != "missing":
        lines = [
            f"{c} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} {(b[2] - b[0]) / w:.6f} "
            f"{(b[3] - b[1]) / h:.6f}\n"
            for c, b in labels
        ]
        Path(label_path).write_text("".join(lines))
    return w, h, labels


def background_modes(n: int, rng: np.random.Generator) -> list[str]:
    """~10% background images (>= 2 when n >= 4): one or two without a label file, the rest empty."""
    modes = ["objects"] * n
    if n < 4:
        return modes
    n_bg = max(2, round(0.1 * n))
    for j, i in enumerate(rng.choice(n, size=n_bg, replace=False)):
        modes[int(i)] = "missing" if j < (1 if n_bg == 2 else 2) else "empty"
    return modes


def write_detection(
    root: Path,
    sizes: dict[str, int],
    set_ids: dict[str, int],
    background_rng: Callable[[int], np.random.Generator],
    run: Callable,
    style: str = "mixed",
    classes: Sequence[ClassSpec] = (),
) -> dict:
    """Write each split: images, YOLO labels, COCO json and data.yaml. `run(tasks, desc, fn, total=...)` maps
    render_detection over the tasks (in worker processes when there are several); `set_ids` and
    `background_rng` give each split its own random streams; `style` is a key of synth_draw.DETECTION_STYLES."""
    drawn: tuple[str | ClassSpec, ...] = tuple(classes) if style == "mixed" else DETECTION_SHAPES
    names = [c.folder if isinstance(c, ClassSpec) else c for c in drawn]
    summary: dict[str, Any] = {"nc": len(names), "names": names, "style": style}
    for split, n in sizes.items():
        if n == 0 and split == "test":
            continue
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        modes = background_modes(n, background_rng(set_ids[split]))
        stems = [f"{split}_{i + 1:05d}" for i in range(n)]
        tasks = [
            (
                set_ids[split],
                i,
                str(root / "images" / split / f"{stems[i]}.jpg"),
                str(root / "labels" / split / f"{stems[i]}.txt"),
                modes[i],
                style,
                drawn,
            )
            for i in range(n)
        ]
        results = run(tasks, f"synth detection/{split}", render_detection, total=len(tasks))
        write_coco(root / "annotations" / f"instances_{split}.json", stems, results, names)
        summary[split] = {
            "images": n,
            "boxes": sum(len(r[2]) for r in results),
            "background": sum(m != "objects" for m in modes),
            "missing_label_files": sum(m == "missing" for m in modes),
        }
    splits = {s: f"images/{s}" for s, n in sizes.items() if n or s != "test"}
    (root / "data.yaml").write_text(
        yaml.safe_dump(
            {"path": ".", **splits, "nc": len(names), "names": names},
            sort_keys=False,
            default_flow_style=None,
        )
    )
    return summary


def write_coco(path: Path, stems: list[str], results: list, names: list[str]) -> None:
    """COCO instances json; category id = YOLO class + 1, bbox = [x, y, w, h] in pixels."""
    images, annotations = [], []
    for image_id, (stem, (w, h, labels)) in enumerate(zip(stems, results, strict=True), start=1):
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": w, "height": h})
        for cls, (x1, y1, x2, y2) in labels:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "area": float((x2 - x1) * (y2 - y1)),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": "visionflow synthetic detection set", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(names)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
