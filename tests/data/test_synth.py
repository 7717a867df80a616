"""The synthetic data generator: determinism, layouts (ImageNet, ImageFolder, YOLO, COCO), dirt."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightning_modules.data.synth import synthesize
from lightning_modules.data.synth_classes import IMAGENET_SHAPES, make_classes, make_wnids
from lightning_modules.errors import ConfigError, DataError

TINY = dict(
    classes=3,
    per_class=10,
    val_per_class=2,
    transfer_classes=2,
    transfer_per_class=2,
    transfer_val_per_class=1,
    det_train=6,
    det_val=4,
    det_test=3,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, seed, workers in (("a", 0, 1), ("b", 0, 1), ("c", 0, 2), ("d", 1, 1)):
        out[name] = tmp_path_factory.mktemp(name)
        synthesize(out[name], seed=seed, workers=workers, **TINY)
    return out


@pytest.fixture(scope="module")
def data(runs) -> Path:
    return runs["a"]


def test_same_seed_gives_identical_bytes_whatever_the_workers(runs):
    a, b, c = _files(runs["a"]), _files(runs["b"]), _files(runs["c"])
    assert len(a) > 50
    assert a.keys() == b.keys() == c.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert [k for k in a if a[k] != c[k]] == []


def test_other_seed_differs(runs):
    a, d = _files(runs["a"]), _files(runs["d"])
    assert (runs["a"] / "imagenet/LOC_synset_mapping.txt").read_text() != (
        runs["d"] / "imagenet/LOC_synset_mapping.txt"
    ).read_text()
    common = a.keys() & d.keys()
    assert sum(a[k] != d[k] for k in common) > 0.9 * len(common)


def test_imagenet_layout(data):
    root = data / "imagenet"
    mapping = (root / "LOC_synset_mapping.txt").read_text().splitlines()
    assert len(mapping) == 3
    wnids = [line.split(" ", 1)[0] for line in mapping]
    assert wnids == sorted(wnids) and len(set(wnids)) == 3
    for line in mapping:
        assert re.fullmatch(r"n\d{8} [a-z -]+, [a-z -]+", line), line
    assert sorted(p.name for p in (root / "train").iterdir()) == wnids
    for w in wnids:
        names = sorted(p.name for p in (root / "train" / w).iterdir())
        assert names == sorted(f"{w}_{k}.JPEG" for k in range(1, 11))

    rows = list(csv.reader((root / "LOC_val_solution.csv").open()))
    assert rows[0] == ["ImageId", "PredictionString"]
    val_files = sorted(p.name for p in (root / "val").iterdir())
    assert val_files == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
    assert sorted(r[0] + ".JPEG" for r in rows[1:]) == val_files
    per_class = {w: 0 for w in wnids}
    for image_id, pred in rows[1:]:
        wnid, *box = pred.split()
        assert wnid in per_class
        per_class[wnid] += 1
        x1, y1, x2, y2 = map(int, box)
        w, h = Image.open(root / "val" / f"{image_id}.JPEG").size
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert set(per_class.values()) == {2}


def test_imagenet_has_realistic_dirt(data):
    modes, formats = set(), set()
    for p in (data / "imagenet/train").rglob("*.JPEG"):
        with Image.open(p) as im:
            modes.add(im.mode)
            formats.add(im.format)
    assert {"RGB", "L", "CMYK"} <= modes
    assert {"JPEG", "PNG"} == formats
    summary = json.loads((data / "synth.json").read_text())
    assert summary["imagenet"]["dirt"] == {"grayscale": 1, "cmyk": 1, "png": 1}


def test_transfer_is_an_imagefolder_with_other_classes(data):
    root = data / "transfer"
    train = sorted(p.name for p in (root / "train").iterdir())
    assert train == sorted(p.name for p in (root / "val").iterdir()) and len(train) == 2
    assert all(len(list((root / "train" / c).glob("*.jpg"))) == 2 for c in train)
    assert all(len(list((root / "val" / c).glob("*.jpg"))) == 1 for c in train)
    imagenet_names = {
        line.split(" ", 1)[1].split(",")[0].replace("-", "_").replace(" ", "_")
        for line in (data / "imagenet/LOC_synset_mapping.txt").read_text().splitlines()
    }
    assert not set(train) & imagenet_names
    imagenet_shapes = {name.rsplit("_", 1)[1] for name in imagenet_names}
    assert not {c.rsplit("_", 1)[1] for c in train} & imagenet_shapes


def test_test_splits_come_from_their_own_streams(tmp_path):
    """Held-out test images never change the train/val images of a seed (nor each other's counts)."""
    small = {**TINY, "det_train": 4, "det_val": 2}
    synthesize(tmp_path / "without", **{**small, "det_test": 0}, transfer_test_per_class=0)
    without = _files(tmp_path / "without")
    summary = synthesize(tmp_path / "with", **{**small, "det_test": 3}, transfer_test_per_class=3, test_per_class=2)
    with_test = _files(tmp_path / "with")
    # What a test split adds: its images and labels, COCO's instances_test.json, `test:` in data.yaml.
    test_keys = {k for k in with_test if "/test/" in k or k.endswith("instances_test.json")}
    described = {"synth.json", "detection/data.yaml"}
    assert {k for k in with_test if k not in test_keys | described} == set(without) - described
    assert all(with_test[k] == without[k] for k in without if k not in described)
    assert summary["detection"]["test"]["images"] == 3
    assert len([k for k in test_keys if k.startswith("detection/images/test/")]) == 3
    data_yaml = yaml.safe_load((tmp_path / "with/detection/data.yaml").read_text())
    assert data_yaml["test"] == "images/test" and "test" not in yaml.safe_load(
        (tmp_path / "without/detection/data.yaml").read_text()
    )
    assert summary["transfer"]["test"] == 2 * 3 and summary["imagenet"]["test"] == 3 * 2
    transfer_test = sorted(p.name for p in (tmp_path / "with/transfer/test").iterdir())
    assert transfer_test == sorted(summary["transfer_classes"])
    wnids = sorted(p.name for p in (tmp_path / "with/imagenet/train").iterdir())
    assert sorted(p.name for p in (tmp_path / "with/imagenet/test").iterdir()) == wnids
    assert all(len(list((tmp_path / "with/imagenet/test" / w).glob("*.JPEG"))) == 2 for w in wnids)
    # The default writes a transfer test split (10 per class) and no ImageNet one.
    assert (tmp_path / "with/transfer/test").is_dir() and not (tmp_path / "without/transfer/test").exists()


def _yolo(path: Path) -> list[list[float]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        assert len(parts) == 5 and all(re.fullmatch(r"\d\.\d{6}", p) for p in parts[1:]), line
        rows.append([int(parts[0]), *map(float, parts[1:])])
    return rows


def test_detection_yolo_and_coco_agree(data):
    root = data / "detection"
    meta = yaml.safe_load((root / "data.yaml").read_text())
    assert meta == {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "nc": 5,
        "names": json.loads((data / "synth.json").read_text())["detection"]["names"],
    }
    assert len(set(meta["names"])) == 5 and all(n.split("_")[-1] in IMAGENET_SHAPES for n in meta["names"])
    for split, n in (("train", 6), ("val", 4), ("test", 3)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        assert len(images) == n
        coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
        assert [c["name"] for c in coco["categories"]] == meta["names"]
        assert sorted(im["file_name"] for im in coco["images"]) == [p.name for p in images]
        anns: dict[int, list] = {}
        for a in coco["annotations"]:
            assert a["iscrowd"] == 0 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
            anns.setdefault(a["image_id"], []).append(a)
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        for im in coco["images"]:
            w, h = im["width"], im["height"]
            assert Image.open(root / "images" / split / im["file_name"]).size == (w, h)
            label = root / "labels" / split / (Path(im["file_name"]).stem + ".txt")
            yolo = _yolo(label) if label.exists() else []
            coco_boxes = sorted((a["category_id"] - 1, *a["bbox"]) for a in anns.get(im["id"], []))
            yolo_boxes = sorted((c, (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h) for c, cx, cy, bw, bh in yolo)
            assert len(coco_boxes) == len(yolo_boxes) <= 6
            for cb, yb in zip(coco_boxes, yolo_boxes, strict=True):
                assert cb[0] == yb[0] and 0 <= cb[0] < 5
                assert np.allclose(cb[1:], yb[1:], atol=1.0), (cb, yb)
            for _, cx, cy, bw, bh in yolo:
                assert 0 < bw <= 1 and 0 < bh <= 1
                assert 0 <= cx - bw / 2 + 1e-6 and cx + bw / 2 <= 1 + 1e-6
                assert 0 <= cy - bh / 2 + 1e-6 and cy + bh / 2 <= 1 + 1e-6


def test_detection_has_background_images(data):
    root = data / "detection"
    empty = missing = 0
    for split in ("train", "val"):
        for img in (root / "images" / split).glob("*.jpg"):
            label = root / "labels" / split / f"{img.stem}.txt"
            if not label.exists():
                missing += 1
            elif label.read_text() == "":
                empty += 1
    assert missing >= 2 and empty >= 2
    coco = json.loads((root / "annotations/instances_train.json").read_text())
    assert len({im["id"] for im in coco["images"]} - {a["image_id"] for a in coco["annotations"]}) == 2


def test_detection_has_small_and_overlapping_objects(tmp_path):
    synthesize(tmp_path, **{**TINY, "det_train": 24, "det_val": 0})
    coco = json.loads((tmp_path / "detection/annotations/instances_train.json").read_text())
    sides = [max(a["bbox"][2:]) for a in coco["annotations"]]
    assert min(sides) <= 16 and max(sides) >= 40
    overlapping = 0
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    for boxes in by_image.values():
        for i, (x, y, w, h) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1 :]:
                overlapping += min(x + w, x2 + w2) > max(x, x2) and min(y + h, y2 + h2) > max(y, y2)
    assert overlapping > 0


def test_detection_classes_are_the_first_imagenet_classes_in_their_looks(tmp_path):
    """The backbone is pretrained on the ImageNet-style classes; the detection set draws the first five of
    them (shape, texture and colours), as VOC's classes are ImageNet classes. The look-alike style keeps
    bare shapes in random looks."""
    summary = synthesize(tmp_path / "mixed", **{**TINY, "classes": 7, "per_class": 2})
    imagenet = [c["name"] for c in summary["classes"]]
    names = yaml.safe_load((tmp_path / "mixed" / "detection" / "data.yaml").read_text())["names"]
    assert names == [n.replace("-", "_").replace(" ", "_") for n in imagenet[:5]]
    summary = synthesize(tmp_path / "small", **{**TINY, "det_style": "small"})
    assert yaml.safe_load((tmp_path / "small" / "detection" / "data.yaml").read_text())["names"] == [
        "disk",
        "square",
        "triangle",
        "star",
        "cross",
    ]


def test_rerun_replaces_own_output_and_refuses_foreign_data(tmp_path):
    small = {**TINY, "per_class": 2}
    synthesize(tmp_path / "own", **small)
    summary = synthesize(tmp_path / "own", **{**small, "classes": 2})
    assert len(list((tmp_path / "own/imagenet/train").iterdir())) == 2 == summary["imagenet"]["classes"]
    assert not list((tmp_path / "own").glob(".*staging*"))
    (tmp_path / "real/imagenet").mkdir(parents=True)
    with pytest.raises(DataError, match="imagenet"):
        synthesize(tmp_path / "real", **small)


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="classes"):
        synthesize(tmp_path, classes=0)
    with pytest.raises(ConfigError, match="at most"):
        synthesize(tmp_path, classes=100_000)


def test_a_thousand_classes_stay_distinct():
    specs = make_classes(1000, IMAGENET_SHAPES, np.random.default_rng(0))
    assert len({s.name for s in specs}) == 1000 and len({s.folder for s in specs}) == 1000
    assert len(set(make_wnids(1000, np.random.default_rng(0)))) == 1000
    # Small sets reuse few colours, so colour alone cannot tell classes apart.
    few = make_classes(10, IMAGENET_SHAPES, np.random.default_rng(0))
    assert len({c for s in few for c in s.colours}) <= 5


def test_make_run_regenerates_only_data_it_generated_with_an_older_version(tmp_path):
    from lightning_modules.data import bootstrap

    ours = tmp_path / "ours"
    synthesize(ours, **TINY)
    assert not bootstrap._outdated(ours)
    summary = json.loads((ours / "synth.json").read_text())
    (ours / "synth.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "generator"}))
    assert bootstrap._outdated(ours)  # generated before the test split existed
    users = tmp_path / "users"
    (users / "imagenet").mkdir(parents=True)
    assert not bootstrap._outdated(users)  # no synth.json: a user's data, never replaced
