"""Detection readers (YOLO, COCO, VOC) and prep_detection, on tiny hand-written datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightning_modules.data.detection_prep import prep_detection
from lightning_modules.data.detection_readers import read_coco, read_detection, read_voc, read_yolo
from lightning_modules.errors import ConfigError, DataError

CLASSES = ["cat", "dog"]
# One scene: split -> image stem -> (width, height, [(class, x1, y1, x2, y2)])
SCENE = {
    "train": {
        "a": (100, 80, [(0, 10, 20, 50, 60), (1, 40, 10, 90, 70)]),
        "b": (60, 60, []),  # background
    },
    "val": {"c": (50, 40, [(1, 5, 5, 25, 35)])},
}


def _image(path: Path, w: int, h: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), 128 if mode in ("L", "CMYK") else (90, 120, 200)).save(path)


def _yolo_line(c: int, x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> str:
    return f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"


def write_yolo(root: Path, scene: dict = SCENE, names=None) -> Path:
    for split, images in scene.items():
        for stem, (w, h, boxes) in images.items():
            _image(root / "images" / split / f"{stem}.jpg", w, h)
            if boxes:  # a background image has no label file
                lines = [_yolo_line(c, *b, w, h) for c, *b in boxes]
                label = root / "labels" / split / f"{stem}.txt"
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text("\n".join(lines) + "\n")
    names = names if names is not None else {0: "cat", 1: "dog"}  # dict form, as Ultralytics writes it
    cfg = {"path": str(root), "train": "images/train", "val": "images/val", "nc": 2, "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root


def write_coco(root: Path, scene: dict = SCENE) -> Path:
    cat_ids = {0: 3, 1: 7}  # sparse ids -> contiguous 0..K-1 in id order
    ann_id = 1
    for split, images in scene.items():
        doc = {"images": [], "annotations": [],
               "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
        for i, (stem, (w, h, boxes)) in enumerate(images.items(), start=1):
            _image(root / "images" / split / f"{stem}.jpg", w, h)
            doc["images"].append({"id": i, "file_name": f"{stem}.jpg", "width": w, "height": h})
            for c, x1, y1, x2, y2 in boxes:
                doc["annotations"].append({"id": ann_id, "image_id": i, "category_id": cat_ids[c],
                                           "bbox": [x1, y1, x2 - x1, y2 - y1], "area": 1, "iscrowd": 0})
                ann_id += 1
        f = root / "annotations" / f"instances_{split}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(doc))
    return root


def _voc_xml(filename: str, w: int, h: int, objects: list[str]) -> str:
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>")


def _voc_object(name: str, x1, y1, x2, y2, difficult: int = 0) -> str:
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def write_voc(root: Path, scene: dict = SCENE) -> Path:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, images in scene.items():
        for stem, (w, h, boxes) in images.items():
            _image(root / "JPEGImages" / f"{stem}.jpg", w, h)
            objs = [_voc_object(CLASSES[c], *b, difficult=int(stem == "c")) for c, *b in boxes]
            (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(f"{stem}.jpg", w, h, objs))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
    return root


def _as_scene(data) -> dict:
    return {(im.split, im.path.stem): (im.width, im.height, [(l, *b) for l, b in zip(im.labels, im.boxes)])
            for im in data.images}


def _expected() -> dict:
    return {(s, stem): (w, h, [tuple(float(v) for v in b) for b in boxes])
            for s, images in SCENE.items() for stem, (w, h, boxes) in images.items()}


def _assert_same_scene(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, (w, h, boxes) in want.items():
        gw, gh, gboxes = got[key]
        assert (gw, gh) == (w, h), key
        assert len(gboxes) == len(boxes), key
        for g, e in zip(gboxes, boxes):
            assert g[0] == e[0]
            assert g[1:] == pytest.approx(e[1:], abs=1e-6), key


# ---------------------------------------------------------------- readers agree


def test_three_formats_give_the_same_boxes(tmp_path):
    yolo = read_yolo(write_yolo(tmp_path / "yolo"))
    coco = read_coco(write_coco(tmp_path / "coco"))
    voc = read_voc(write_voc(tmp_path / "voc"))
    for data in (yolo, coco, voc):
        assert data.classes == CLASSES
        assert data.rejected == []
        _assert_same_scene(_as_scene(data), _expected())
    assert [im.background for im in yolo.images if im.path.stem == "b"] == [True]
    assert next(im for im in voc.images if im.path.stem == "c").difficult == [True]


def test_yolo_names_as_list(tmp_path):
    data = read_yolo(write_yolo(tmp_path, names=["cat", "dog"]))
    assert data.classes == CLASSES


def test_voc_without_imagesets_gets_a_seeded_split(tmp_path):
    root = write_voc(tmp_path)
    for f in (root / "ImageSets" / "Main").iterdir():
        f.unlink()
    a = read_voc(root, val_fraction=0.34, seed=1)
    b = read_voc(root, val_fraction=0.34, seed=1)
    assert [(im.path.name, im.split) for im in a.images] == [(im.path.name, im.split) for im in b.images]
    assert sorted(im.split for im in a.images) == ["train", "train", "val"]


# ---------------------------------------------------------------- bad boxes


def test_yolo_bad_boxes_reported_with_file_and_line(tmp_path):
    root = write_yolo(tmp_path)
    label = root / "labels" / "train" / "a.txt"
    label.write_text("\n".join([
        "0 0.5 0.5 0.2 0.2",  # 1 good
        "0 0.5 0.5",  # 2 wrong token count
        "0 abc 0.5 0.2 0.2",  # 3 not a number
        "5 0.5 0.5 0.2 0.2",  # 4 class out of range
        "0 0.5 0.5 0 0.2",  # 5 zero area
        "0 0.95 0.5 0.2 0.2",  # 6 x2 = 105 px > 100 + 1: outside
        "",  # 7 blank: skipped, still counted as a line
        "1 0.905 0.5 0.2 0.2",  # 8 x2 = 100.5 px: clipped to 100, kept
    ]))
    data = read_yolo(root)
    got = {(Path(r.path).name, r.line): r.reason for r in data.rejected}
    assert set(got) == {("a.txt", n) for n in (2, 3, 4, 5, 6)}
    assert "expected 5" in got[("a.txt", 2)]
    assert "non-numeric" in got[("a.txt", 3)]
    assert "out of range" in got[("a.txt", 4)]
    assert "zero or negative area" in got[("a.txt", 5)]
    assert "outside" in got[("a.txt", 6)]
    a = next(im for im in data.images if im.path.stem == "a")  # the image is kept
    assert a.labels == [0, 1]
    assert a.boxes[1][2] == 100.0


def test_coco_bad_boxes_reported_with_annotation_id(tmp_path):
    root = write_coco(tmp_path)
    f = root / "annotations" / "instances_train.json"
    doc = json.loads(f.read_text())
    doc["annotations"] += [
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10, 10, -5, 5]},
        {"id": 12, "image_id": 1, "category_id": 99, "bbox": [10, 10, 5, 5]},
        {"id": 13, "image_id": 1, "category_id": 3, "bbox": [90, 10, 20, 5]},
        {"id": 14, "image_id": 1, "category_id": 3, "bbox": [10, 10, 5]},
    ]
    doc["images"].append({"id": 9, "file_name": "missing.jpg", "width": 10, "height": 10})
    f.write_text(json.dumps(doc))
    data = read_coco(root)
    got = {(Path(r.path).name, r.line): r.reason for r in data.rejected}
    assert "zero or negative area" in got[("instances_train.json", 11)]
    assert "category_id 99" in got[("instances_train.json", 12)]
    assert "outside" in got[("instances_train.json", 13)]
    assert "malformed bbox" in got[("instances_train.json", 14)]
    assert "missing or unreadable image" in got[("missing.jpg", None)]
    assert len(next(im for im in data.images if im.path.stem == "a").boxes) == 2


def test_voc_bad_object_reported_with_object_number(tmp_path):
    root = write_voc(tmp_path)
    objs = [_voc_object("cat", 10, 20, 50, 60), _voc_object("dog", 50, 10, 40, 70),
            "<object><name>dog</name><bndbox><xmin>x</xmin></bndbox></object>"]
    (root / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg", 100, 80, objs))
    data = read_voc(root)
    got = {(Path(r.path).name, r.line): r.reason for r in data.rejected}
    assert set(got) == {("a.xml", 2), ("a.xml", 3)}
    assert "zero or negative area" in got[("a.xml", 2)]
    assert "malformed" in got[("a.xml", 3)]


def test_unknown_format_and_missing_sources(tmp_path):
    with pytest.raises(ConfigError, match="fmt"):
        read_detection(tmp_path, "kitti")
    with pytest.raises(DataError, match="data.yaml") as e:
        read_yolo(tmp_path)
    assert e.value.path == str(tmp_path / "data.yaml")
    with pytest.raises(DataError, match="instances_train.json"):
        read_coco(tmp_path)
    with pytest.raises(DataError, match="Annotations"):
        read_voc(tmp_path)


# ---------------------------------------------------------------- prep


def _big_scene(n: int = 6) -> dict:
    """Enough boxes (3 per image) for 9 anchors; sizes vary so k-means has something to find."""
    train = {f"t{i}": (64 + 8 * i, 48, [(i % 2, 2 + i, 3, 20 + 4 * i, 30), (1, 30, 5, 60, 20 + 3 * i),
                                         (0, 5, 25, 15 + 5 * i, 46)]) for i in range(n)}
    train["empty"] = (32, 32, [])
    return {"train": train, "val": {"v0": (40, 40, [(0, 1, 1, 30, 30)])}}


def test_prep_writes_manifest_splits_images_preview(tmp_path):
    scene = _big_scene()
    src = write_yolo(tmp_path / "src", scene)
    _image(src / "images" / "train" / "grey.png", 40, 30, mode="L")  # converted to RGB, background
    _image(src / "images" / "train" / "cmyk.jpg", 40, 30, mode="CMYK")
    out = tmp_path / "prepared" / "det"
    m = prep_detection(src, out, source_data_version="abc123")
    assert m == json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "detection" and m["classes"] == CLASSES
    assert m["counts"]["train"] == {"images": 9, "boxes": 18, "background": 3}
    assert m["counts"]["val"] == {"images": 1, "boxes": 1, "background": 0}
    assert m["rejected"] == [] and m["source_data_version"] == "abc123"
    assert [len(m["anchors"]["v2"]), len(m["anchors"]["v3"])] == [5, 9]
    assert m["anchor_image_size"] == 416
    assert 0 < m["anchor_stats"]["v3"]["avg_iou"] <= 1 and m["anchor_stats"]["v3"]["bpr"] == 1.0
    train = json.loads((out / "train.json").read_text())
    row = next(r for r in train if r["image"] == "images/train/t1.png")
    assert row["width"] == 72 and row["height"] == 48 and row["labels"] == [1, 1, 0]
    assert row["boxes"][0] == pytest.approx([3, 3, 24, 30], abs=1e-3)
    for r in train + json.loads((out / "val.json").read_text()):
        with Image.open(out / r["image"]) as im:
            assert im.mode == "RGB" and im.format == "PNG" and im.size == (r["width"], r["height"])
    assert (out / "preview.png").stat().st_size > 0
    assert not list(out.parent.glob(".det.*"))  # no staging left behind


def test_prep_yolo_and_coco_agree(tmp_path):
    scene = _big_scene()
    a = prep_detection(write_yolo(tmp_path / "y", scene), tmp_path / "py")
    b = prep_detection(write_coco(tmp_path / "c", scene), tmp_path / "pc", fmt="coco")
    assert a["counts"] == b["counts"] and a["anchors"] == b["anchors"]
    for split in ("train", "val"):
        ya = sorted(json.loads((tmp_path / "py" / f"{split}.json").read_text()), key=lambda r: r["image"])
        cb = sorted(json.loads((tmp_path / "pc" / f"{split}.json").read_text()), key=lambda r: r["image"])
        assert [r["labels"] for r in ya] == [r["labels"] for r in cb]
        for r, s in zip(ya, cb):
            np.testing.assert_allclose(r["boxes"], s["boxes"], atol=1e-3)


def test_rejection_limit_names_files(tmp_path):
    src = write_yolo(tmp_path / "src", _big_scene())
    (src / "labels" / "train" / "t0.txt").write_text("0 0.5 0.5\n0 2 2 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match="t0.txt") as e:
        prep_detection(src, tmp_path / "out", max_rejected_fraction=0.1)
    assert "3 of 19 boxes rejected" in str(e.value)
    assert not (tmp_path / "out").exists()
    m = prep_detection(src, tmp_path / "out", max_rejected_fraction=0.5)  # under a looser limit it passes
    assert [(Path(r["path"]).name, r["line"]) for r in m["rejected"]] == [("t0.txt", 1), ("t0.txt", 2), ("t0.txt", 3)]


def test_failed_prep_leaves_previous_output_intact(tmp_path):
    src = write_yolo(tmp_path / "src", _big_scene())
    out = tmp_path / "out"
    first = prep_detection(src, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for label in (src / "labels" / "train").glob("*.txt"):
        label.unlink()  # every train image is background now: too few boxes for anchors, fails mid-prep
    with pytest.raises(DataError, match="fewer than"):
        prep_detection(src, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert json.loads((out / "manifest.json").read_text()) == first
    assert not list(tmp_path.glob(".out.*"))


def test_prep_unknown_format_is_config_error(tmp_path):
    write_yolo(tmp_path / "src")
    with pytest.raises(ConfigError):
        prep_detection(tmp_path / "src", tmp_path / "out", fmt="kitti")


def test_synthetic_detection_set_preps_the_same_from_yolo_and_coco(tmp_path):
    from lightning_modules.data.synth import synthesize

    summary = synthesize(tmp_path / "raw", classes=3, per_class=4, val_per_class=2, transfer_classes=2,
                         transfer_per_class=2, transfer_val_per_class=1, det_train=12, det_val=4)
    src = tmp_path / "raw" / "detection"
    y = prep_detection(src, tmp_path / "py")
    c = prep_detection(src, tmp_path / "pc", fmt="coco")
    assert y["classes"] == c["classes"] == summary["detection"]["names"]
    assert y["counts"] == c["counts"]
    assert y["counts"]["train"]["images"] == 12 and y["counts"]["val"]["images"] == 4
    assert y["rejected"] == c["rejected"] == []
    for split in ("train", "val"):
        ys = {r["image"]: r for r in json.loads((tmp_path / "py" / f"{split}.json").read_text())}
        cs = {r["image"]: r for r in json.loads((tmp_path / "pc" / f"{split}.json").read_text())}
        assert ys.keys() == cs.keys()
        for name, r in ys.items():
            assert r["labels"] == cs[name]["labels"], name
            np.testing.assert_allclose(np.reshape(r["boxes"], (-1, 4)), np.reshape(cs[name]["boxes"], (-1, 4)),
                                       atol=0.05, err_msg=name)
