"""The benchmark helpers that make data: what they write is a valid set for the project's own preps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_shapes_set_is_a_plain_yolo_set_the_detection_prep_accepts(tmp_path: Path) -> None:
    from lightning_modules.data.detection_prep import prep_detection

    raw = tmp_path / "shapes"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "shapes_set.py"), str(raw), "--train", "8", "--val", "4"], check=True
    )
    assert len(list((raw / "images" / "train").glob("*.jpg"))) == 8
    summary = prep_detection(raw, tmp_path / "prepared", anchor_image_size=192)
    counts = summary["counts"]
    assert counts["train"]["images"] == 8 and counts["val"]["images"] == 4
    assert counts["train"]["boxes"] >= 8  # 1-5 shapes per image
    # the same seed writes the same bytes (a benchmark set must be reproducible)
    again = tmp_path / "again"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "shapes_set.py"), str(again), "--train", "8", "--val", "4"], check=True
    )
    first = sorted(p.read_bytes() for p in (raw / "labels" / "train").iterdir())
    assert first == sorted(p.read_bytes() for p in (again / "labels" / "train").iterdir())
