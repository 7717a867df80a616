"""Detection readers (YOLO, COCO, VOC) and prep_detection, on tiny hand-written datasets."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
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
        doc = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
        for i, (stem, (w, h, boxes)) in enumerate(images.items(), start=1):
            _image(root / "images" / split / f"{stem}.jpg", w, h)
            doc["images"].append({"id": i, "file_name": f"{stem}.jpg", "width": w, "height": h})
            for c, x1, y1, x2, y2 in boxes:
                doc["annotations"].append(
                    {
                        "id": ann_id,
                        "image_id": i,
                        "category_id": cat_ids[c],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": 1,
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
        f = root / "annotations" / f"instances_{split}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(doc))
    return root


def _voc_xml(filename: str, w: int, h: int, objects: list[str]) -> str:
    return (
        f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>3</depth></size>{''.join(objects)}</annotation>"
    )


def _voc_object(name: str, x1, y1, x2, y2, difficult: int = 0) -> str:
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


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
    return {
        (im.split, im.path.stem): (im.width, im.height, [(c, *b) for c, b in zip(im.labels, im.boxes)])
        for im in data.images
    }


def _expected() -> dict:
    return {
        (s, stem): (w, h, [tuple(float(v) for v in b) for b in boxes])
        for s, images in SCENE.items()
        for stem, (w, h, boxes) in images.items()
    }


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
    label.write_text(
        "\n".join(
            [
                "0 0.5 0.5 0.2 0.2",  # 1 good
                "0 0.5 0.5",  # 2 wrong token count
                "0 abc 0.5 0.2 0.2",  # 3 not a number
                "5 0.5 0.5 0.2 0.2",  # 4 class out of range
                "0 0.5 0.5 0 0.2",  # 5 zero area
                "0 0.95 0.5 0.2 0.2",  # 6 x2 = 105 px > 100 + 1: outside
                "",  # 7 blank: skipped, still counted as a line
                "1 0.905 0.5 0.2 0.2",  # 8 x2 = 100.5 px: clipped to 100, kept
            ]
        )
    )
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
    objs = [
        _voc_object("cat", 10, 20, 50, 60),
        _voc_object("dog", 50, 10, 40, 70),
        "<object><name>dog</name><bndbox><xmin>x</xmin></bndbox></object>",
    ]
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
    train = {
        f"t{i}": (
            64 + 8 * i,
            48,
            [(i % 2, 2 + i, 3, 20 + 4 * i, 30), (1, 30, 5, 60, 20 + 3 * i), (0, 5, 25, 15 + 5 * i, 46)],
        )
        for i in range(n)
    }
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

    summary = synthesize(
        tmp_path / "raw",
        classes=3,
        per_class=4,
        val_per_class=2,
        transfer_classes=2,
        transfer_per_class=2,
        transfer_val_per_class=1,
        det_train=12,
        det_val=4,
        det_test=3,
    )
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
            np.testing.assert_allclose(
                np.reshape(r["boxes"], (-1, 4)), np.reshape(cs[name]["boxes"], (-1, 4)), atol=0.05, err_msg=name
            )


# ---------------------------------------------------------------- hostile or broken inputs (outside review)


def _png_claiming(path: Path, w: int, h: int) -> Path:
    """A tiny valid PNG whose IHDR then claims w x h pixels (CRC fixed): only a decode would notice."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"  # 8-byte signature, 4-byte length, then the IHDR chunk
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def _reasons(data_or_manifest) -> dict:
    rejected = (
        data_or_manifest["rejected"]
        if isinstance(data_or_manifest, dict)
        else [r.as_dict() for r in data_or_manifest.rejected]
    )
    return {(Path(r["path"]).name, r["line"]): r["reason"] for r in rejected}


def test_huge_images_rejected_from_the_header(tmp_path):
    root = write_yolo(tmp_path / "src", _big_scene())
    _png_claiming(root / "images" / "train" / "bomb.png", 60000, 60000)  # PIL itself would raise
    _png_claiming(root / "images" / "train" / "big.png", 13000, 13000)  # PIL would decode 1.15 GB
    m = prep_detection(root, tmp_path / "out", max_rejected_fraction=0.5)
    got = _reasons(m)
    assert got[("big.png", None)] == ("image is 13000x13000 (169.0 MP), over the max_image_pixels limit of 100 MP")
    assert got[("bomb.png", None)].startswith("image is 60000x60000 (3600.0 MP), over")
    assert m["counts"]["train"]["images"] == 7 and m["max_image_pixels"] == 100_000_000
    # the limit is configurable: 64x48 = 3072 pixels passes at 4000, 72x48 does not
    data = read_yolo(root, max_image_pixels=3100)
    assert "over the max_image_pixels limit of 0.0031 MP" in _reasons(data)[("t1.jpg", None)]
    with pytest.raises(ConfigError, match="max_image_pixels"):
        prep_detection(root, tmp_path / "out2", max_image_pixels=0)


def test_write_images_checks_the_header_before_decoding(tmp_path):
    from lightning_modules.data.detection_prep import _write_images
    from lightning_modules.data.detection_readers import DetectionSource, DetImage

    big = _png_claiming(tmp_path / "big.png", 13000, 13000)
    data = DetectionSource(
        classes=["cat"], images=[DetImage(big, 13000, 13000, [[0, 0, 5, 5]], [0], "train")], rejected=[]
    )
    written = _write_images(data, tmp_path / "stage")
    assert data.images == [] and written.records["train"] == []
    assert data.rejected[0].reason == (
        "image is 13000x13000 (169.0 MP), over the max_image_pixels limit of 100 MP (1 box dropped with it)"
    )


@pytest.mark.parametrize(
    "change, key",
    [
        ({"nc": "five"}, "`nc`"),
        ({"names": "cat dog"}, "`names` must be a list"),
        ({"names": ["cat", {"x": 1}]}, "`names[1]`"),
        ({"names": ["cat", True]}, "`names[1]` is the boolean"),
        ({"names": {0: "cat", 1: None}}, "`names[1]`"),
        ({"path": ["a", "b"]}, "`path`"),
        ({"train": {"a": 1}}, "`train`"),
        ({"val": 7}, "`val`"),
        ({"train": None}, "`train`"),
    ],
)
def test_bad_data_yaml_is_data_error_naming_the_key(tmp_path, change, key):
    root = write_yolo(tmp_path)
    cfg = {**yaml.safe_load((root / "data.yaml").read_text()), **change}
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match=re.escape(key)) as e:
        read_yolo(root)
    assert e.value.path == str(root / "data.yaml")


@pytest.mark.parametrize(
    "categories, match",
    [
        ([{"name": "cat"}], r"categories\[0\] has no `id`"),
        ([{"id": 3, "name": "cat"}, {"id": "seven", "name": "dog"}], r"categories\[1\]: `id` must be an integer"),
        ([{"id": 3, "name": "cat"}, {"id": 3, "name": "dog"}], r"categories\[1\]: id 3 is named 'dog' here but 'cat'"),
        (["cat"], r"categories\[0\] is not an object"),
        ({"3": "cat"}, "`categories` must be a list"),
    ],
)
def test_coco_bad_categories_are_data_errors(tmp_path, categories, match):
    root = write_coco(tmp_path)
    f = root / "annotations" / "instances_train.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "categories": categories}))
    with pytest.raises(DataError, match=match) as e:
        read_coco(root)
    assert e.value.path == str(f)


def test_coco_odd_entries_are_rejections(tmp_path):
    root = write_coco(tmp_path)
    f = root / "annotations" / "instances_train.json"
    doc = json.loads(f.read_text())
    doc["annotations"] += [5, [1, 2], {"image_id": 1, "category_id": 3.5, "bbox": [1, 1, 5, 5]}]
    doc["images"] += [7, {"id": 9}, {"file_name": "b.jpg"}, {"id": [1], "file_name": "b.jpg"}]
    f.write_text(json.dumps(doc))
    data = read_coco(root)
    got = {(r.line, r.reason) for r in data.rejected}
    n = len(doc["annotations"])
    assert (n - 3, f"annotations[{n - 3}] is not an object: '5'") in got
    assert (n - 2, f"annotations[{n - 2}] is not an object: '[1, 2]'") in got
    assert (n - 1, "malformed category_id 3.5 (image a.jpg)") in got  # not silently category 3
    assert {
        (None, "images[2] is not an object: '7'"),
        (None, "images[3] has no `file_name` (got None)"),
        (None, "images[4] has no usable `id` (got None)"),
        (None, "images[5] has no usable `id` (got [1])"),
    } <= got
    assert all(r.path == str(f) for r in data.rejected)
    assert sorted(im.path.stem for im in data.images) == ["a", "b", "c"]
    for key in ("images", "annotations"):
        f.write_text(json.dumps({**doc, key: {"0": 1}}))
        with pytest.raises(DataError, match=f"`{key}` must be a list"):
            read_coco(root)


def test_paths_leaving_the_dataset_root_are_never_read(tmp_path):
    _image(tmp_path / "secret.jpg", 20, 20)  # outside every dataset root below
    coco = write_coco(tmp_path / "coco")
    f = coco / "annotations" / "instances_train.json"
    doc = json.loads(f.read_text())
    doc["images"] += [
        {"id": 20, "file_name": "../../../secret.jpg"},
        {"id": 21, "file_name": str(tmp_path / "secret.jpg")},
    ]
    f.write_text(json.dumps(doc))
    got = {r.reason for r in read_coco(coco).rejected}
    assert f"images[2]: file_name '../../../secret.jpg' leaves the dataset root {coco}: not read" in got
    assert f"images[3]: file_name '{tmp_path / 'secret.jpg'}' leaves the dataset root {coco}: not read" in got

    voc = write_voc(tmp_path / "voc")
    (voc / "Annotations" / "a.xml").write_text(_voc_xml("../../secret.jpg", 20, 20, [_voc_object("cat", 1, 1, 9, 9)]))
    got = _reasons(read_voc(voc))
    assert got[("a.xml", None)] == (
        f"<filename> '../../secret.jpg' leaves the dataset root {voc}: not read (1 box dropped with it)"
    )

    yolo = write_yolo(tmp_path / "yolo")
    (yolo / "train.txt").write_text("images/train/a.jpg\n../secret.jpg\n")
    cfg = yaml.safe_load((yolo / "data.yaml").read_text())
    (yolo / "data.yaml").write_text(yaml.safe_dump({**cfg, "train": "train.txt"}))
    data = read_yolo(yolo)
    assert _reasons(data)[("secret.jpg", None)] == f"image leaves the dataset root {yolo}: not read"
    assert [im.path.name for im in data.images if im.split == "train"] == ["a.jpg"]
    (yolo / "data.yaml").write_text(yaml.safe_dump({**cfg, "train": "../coco/images/train"}))
    with pytest.raises(DataError, match="`train` entry '../coco/images/train' leaves the dataset root"):
        read_yolo(yolo)
    # `path` pointing elsewhere is the user's explicit choice: that folder is then the root
    (yolo / "data.yaml").write_text(
        yaml.safe_dump({**cfg, "path": "../coco", "train": "images/train", "val": "images/val"})
    )
    assert len(read_yolo(yolo).images) == 3


def test_symlinks_out_of_the_root_rejected_and_loops_skipped(tmp_path, caplog):
    _image(tmp_path / "outside" / "o.jpg", 20, 20)
    root = write_yolo(tmp_path / "src")
    train = root / "images" / "train"
    (train / "link.jpg").symlink_to(tmp_path / "outside" / "o.jpg")
    (train / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    (train / "loop").symlink_to(train, target_is_directory=True)  # a folder that contains itself
    (root / "labels" / "train" / "b.txt").symlink_to(tmp_path / "outside" / "o.jpg")
    with caplog.at_level("WARNING", logger="visionflow"):
        data = read_yolo(root)
    got = _reasons(data)
    assert got[("link.jpg", None)].startswith(f"image is a symlink to {tmp_path / 'outside' / 'o.jpg'}, outside")
    assert got[("out", None)].startswith(f"symlinked folder to {tmp_path / 'outside'}, outside the dataset root")
    assert got[("b.txt", None)].startswith("label file is a symlink to")
    assert "symlink loop" in caplog.text
    assert sorted(im.path.name for im in data.images) == ["a.jpg", "c.jpg"]


def test_duplicate_images_within_and_across_splits(tmp_path):
    scene = _big_scene()
    root = write_voc(tmp_path / "src", scene)
    jpg = root / "JPEGImages"
    (jpg / "t1_copy.jpg").write_bytes((jpg / "t1.jpg").read_bytes())  # same split, other name
    (jpg / "a_leak.jpg").write_bytes((jpg / "t2.jpg").read_bytes())  # in val, and read before t2 (sorted stems)
    (root / "Annotations" / "t1_copy.xml").write_text(_voc_xml("t1_copy.jpg", 72, 48, []))
    (root / "Annotations" / "a_leak.xml").write_text(_voc_xml("a_leak.jpg", 80, 48, [_voc_object("cat", 1, 1, 9, 9)]))
    sets = root / "ImageSets" / "Main"
    (sets / "train.txt").write_text((sets / "train.txt").read_text() + "t1_copy\n")
    (sets / "val.txt").write_text((sets / "val.txt").read_text() + "a_leak\n")
    m = prep_detection(root, tmp_path / "out", fmt="voc", max_rejected_fraction=0.3)
    got = _reasons(m)
    assert got[("t1_copy.jpg", None)] == (
        f"duplicate of {jpg / 't1.jpg'} (train): the same image twice in one split: the first copy is kept"
    )
    assert got[("a_leak.jpg", None)] == (
        f"duplicate of {jpg / 't2.jpg'} (train): held-out images must not be seen in training (1 box dropped with it)"
    )
    assert m["duplicates"] == {"within_split": 1, "across_splits": 1}
    val = json.loads((tmp_path / "out" / "val.json").read_text())
    assert [r["image"] for r in val] == ["images/val/v0.png"]


def test_per_file_failures_become_rejections(tmp_path, monkeypatch):
    import lightning_modules.data.detection_readers.yolo as readers

    root = write_yolo(tmp_path / "src", _big_scene())
    (root / "labels" / "train" / "t0.txt").write_bytes(b"\xff\xfe\x00\x01 binary garbage\n")
    corrupt = root / "images" / "train" / "t1.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (48, 72, 3), dtype=np.uint8)
    Image.fromarray(noise).save(corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:-2000])  # header fine, data cut off
    real = readers._read_yolo_labels

    def flaky(label, *a):
        if label.stem == "t2":
            raise RuntimeError("boom")
        return real(label, *a)

    monkeypatch.setattr(readers, "_read_yolo_labels", flaky)
    m = prep_detection(root, tmp_path / "out", max_rejected_fraction=0.5)
    got = _reasons(m)
    assert got[("t0.txt", None)].startswith("label file is not UTF-8 text (binary or another encoding)")
    assert got[("t0.txt", None)].endswith("; its image is dropped")
    assert got[("t2.jpg", None)] == "RuntimeError: boom"
    assert got[("t1.jpg", None)].startswith("unreadable image: ") and got[("t1.jpg", None)].endswith(
        "(3 boxes dropped with it)"
    )
    assert m["counts"]["train"]["images"] == 4


def test_voc_odd_xml_structure_rejected(tmp_path):
    root = write_voc(tmp_path)
    (root / "Annotations" / "a.xml").write_text("<annotations><filename>a.jpg</filename></annotations>")
    obj = _voc_object("dog", 5, 5, 25, 35)
    (root / "Annotations" / "c.xml").write_text(_voc_xml("c.jpg", 50, 40, [f"<group>{obj}</group>"]))
    (root / "Annotations" / "b.xml").write_bytes(b"\x00\xff not xml")
    got = _reasons(read_voc(root))
    assert got[("a.xml", None)] == "root element is <annotations>, not <annotation>: not a VOC annotation"
    assert got[("c.xml", None)] == "1 <object> element(s) not directly under <annotation>: odd structure"
    assert got[("b.xml", None)].startswith("missing or unreadable annotation: ")


def test_unreadable_label_file_drops_its_image(tmp_path, monkeypatch):
    root = write_yolo(tmp_path)
    label = root / "labels" / "train" / "a.txt"
    real = Path.read_bytes

    def read_bytes(self):  # chmod 0 would not stop a test run as root
        if self == label:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    data = read_yolo(root)
    assert _reasons(data)[("a.txt", None)] == (
        f"unreadable label file: [Errno 13] Permission denied: '{label}'; its image is dropped"
    )
    assert sorted(im.path.stem for im in data.images) == ["b", "c"]


def test_manifest_lineage(tmp_path):
    src = write_yolo(tmp_path / "src", _big_scene())
    m = prep_detection(src, tmp_path / "a")
    assert m["producer"] == "visionflow-prep"
    assert len(m["content_hash"]) == 32 and m["data_version"] == "content:" + m["content_hash"][:16]
    assert m["duplicates"] == {"within_split": 0, "across_splits": 0}
    assert prep_detection(src, tmp_path / "a")["content_hash"] == m["content_hash"]  # stable
    assert prep_detection(src, tmp_path / "b", source_data_version="v1")["data_version"] == "v1"
    label = src / "labels" / "train" / "t0.txt"
    label.write_text(label.read_text().replace("0 ", "1 ", 1))  # one label changed
    changed = prep_detection(src, tmp_path / "a")["content_hash"]
    assert changed != m["content_hash"]
    _image(src / "images" / "train" / "t3.jpg", 88, 48, mode="L")  # same size, other pixels
    assert prep_detection(src, tmp_path / "a")["content_hash"] != changed
