"""Classification prep: layouts, bad files, conversions, statistics, read-back, staging, workers."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_modules.data.imagenet_prep import chunk_size_for, prep_classification
from lightning_modules.data.previews import save_grid
from lightning_modules.data.staging import staged_output
from lightning_modules.data.streaming import open_split, read_prepared
from lightning_modules.errors import DataError

S = 16
WNIDS = ["n01440764", "n01443537", "n02102040"]
NAMES = ["tench", "goldfish", "English springer"]
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 210)]


@pytest.fixture(autouse=True)
def _litdata_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_OPTIMIZER_CACHE_FOLDER", str(tmp_path / "litdata-cache"))


def img(path: Path, colour=(128, 128, 128), size=(24, 20), mode="RGB", fmt="JPEG") -> Path:
    """A small solid image with a little noise (so JPEGs are realistic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))  # distinct noise per file: no duplicates
    arr = np.clip(np.array(colour)[None, None] + rng.integers(-8, 9, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(path, fmt)
    return path


def imagenet(root: Path, per_class=5, val_per_class=2, deep=False) -> Path:
    """Raw ImageNet layout with Kaggle's val CSV and synset mapping (optionally Kaggle's deep data folder)."""
    data = root / "ILSVRC" / "Data" / "CLS-LOC" if deep else root
    rows, k = ["ImageId,PredictionString"], 0
    for wnid, colour in zip(WNIDS, COLOURS):
        for i in range(per_class):
            img(data / "train" / wnid / f"{wnid}_{i}.JPEG", colour)
        for _ in range(val_per_class):
            k += 1
            img(data / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", colour)
            rows.append(f"ILSVRC2012_val_{k:08d},{wnid} 1 2 30 40 {wnid} 3 4 10 12")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}, other name\n" for w, n in zip(WNIDS, NAMES)))
    return root


def imagefolder(root: Path, per_class=7, classes=("cat", "dog", "fox")) -> Path:
    for c, colour in zip(classes, COLOURS):
        for i in range(per_class):
            img(root / c / f"photo_{i}.jpg", colour)
    return root


def read_split(out: Path, split: str) -> list[dict]:
    ds = open_split(out, split)
    return [ds[i] for i in range(len(ds))]


def dominant(image) -> int:
    """Index of the strongest channel: which of COLOURS an image shows."""
    return int(image.float().mean(dim=(1, 2)).argmax())


def prep(src, out, **kw):
    return prep_classification(src, out, image_size=S, **kw)


# --- layouts -------------------------------------------------------------------------------------------------


def test_imagenet_layout_with_kaggle_val_csv(tmp_path):
    out = tmp_path / "out"
    m = prep(imagenet(tmp_path / "src"), out)
    assert m["kind"] == "classification" and m["format"] == "litdata" and m["image_size"] == S
    assert [c["wnid"] for c in m["classes"]] == WNIDS
    assert [c["name"] for c in m["classes"]] == NAMES
    assert [(c["index"], c["train"], c["val"]) for c in m["classes"]] == [(0, 5, 2), (1, 5, 2), (2, 5, 2)]
    assert m["totals"] == {"train": 15, "val": 6, "rejected": 0} and m["rejected"] == []
    assert set(m) == {
        "producer",
        "kind",
        "format",
        "image_size",
        "classes",
        "totals",
        "rejected",
        "mean",
        "std",
        "source",
        "source_data_version",
        "created",
        "duplicates",
        "content_hash",
        "data_version",
        "max_image_pixels",
    }
    assert m["data_version"] == "content:" + m["content_hash"][:16]  # no DVC version given: the content's own
    assert json.loads((out / "manifest.json").read_text()) == m
    val = read_split(out, "val")
    assert sorted(s["label"] for s in val) == [0, 0, 1, 1, 2, 2]
    assert all(dominant(s["image"]) == s["label"] for s in val)  # CSV labels reached the right files
    with Image.open(out / "preview.png") as p:
        assert p.width > 3 * S


def test_kaggle_deep_layout(tmp_path):
    m = prep(imagenet(tmp_path / "src", deep=True), tmp_path / "out", source_data_version="abc123")
    assert m["totals"] == {"train": 15, "val": 6, "rejected": 0}
    assert [c["name"] for c in m["classes"]] == NAMES
    assert m["source_data_version"] == "abc123"


def test_torchvision_val_folders(tmp_path):
    src = tmp_path / "src"
    for w, colour in zip(WNIDS, COLOURS):
        for i in range(3):
            img(src / "train" / w / f"{i}.JPEG", colour)
        img(src / "val" / w / "v.JPEG", colour)
    m = prep(src, tmp_path / "out")
    assert [(c["train"], c["val"]) for c in m["classes"]] == [(3, 1)] * 3
    assert all(dominant(s["image"]) == s["label"] for s in read_split(tmp_path / "out", "val"))


def test_imagefolder_stratified_split(tmp_path):
    m = prep(imagefolder(tmp_path / "photos"), tmp_path / "out", val_fraction=0.3, seed=3)
    assert [c["wnid"] for c in m["classes"]] == ["cat", "dog", "fox"] == [c["name"] for c in m["classes"]]
    assert [(c["train"], c["val"]) for c in m["classes"]] == [(5, 2)] * 3  # round(7 * 0.3) = 2 per class
    train, val = read_split(tmp_path / "out", "train"), read_split(tmp_path / "out", "val")
    assert {s["label"] for s in train} == {s["label"] for s in val} == {0, 1, 2}
    assert all(dominant(s["image"]) == s["label"] for s in train + val)
    # the same seed gives the same split
    m2 = prep(imagefolder(tmp_path / "photos"), tmp_path / "out2", val_fraction=0.3, seed=3)
    assert m2["classes"] == m["classes"]


def test_imagefolder_with_train_val_subfolders(tmp_path):
    src = tmp_path / "transfer"
    imagefolder(src / "train", per_class=4)
    imagefolder(src / "val", per_class=2)
    m = prep(src, tmp_path / "out")
    assert m["totals"] == {"train": 12, "val": 6, "rejected": 0}


def test_held_out_test_split_is_prepared_and_counted(tmp_path):
    src = tmp_path / "transfer"
    imagefolder(src / "train", per_class=4)
    imagefolder(src / "val", per_class=2)
    imagefolder(src / "test", per_class=3)
    m = prep(src, tmp_path / "out")
    assert m["totals"] == {"train": 12, "val": 6, "rejected": 0, "test": 9}
    assert [(c["name"], c["train"], c["val"], c["test"]) for c in m["classes"]] == [
        ("cat", 4, 2, 3),
        ("dog", 4, 2, 3),
        ("fox", 4, 2, 3),
    ]
    test = read_split(tmp_path / "out", "test")
    assert sorted(s["label"] for s in test) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(dominant(s["image"]) == [0, 1, 2][s["label"]] for s in test)
    assert read_prepared(tmp_path / "out").counts["test"] == 9
    # An ImageNet layout with test/<wnid>/ folders too; a test class unknown to train is an error.
    root = imagenet(tmp_path / "imnet")
    for wnid, colour in zip(WNIDS, COLOURS):
        img(root / "test" / wnid / f"{wnid}_t.JPEG", colour)
    assert prep(root, tmp_path / "out2")["totals"]["test"] == 3
    img(root / "test" / "n99999999" / "x.JPEG")
    with pytest.raises(DataError, match="n99999999"):
        prep(root, tmp_path / "out3")


# --- bad input -----------------------------------------------------------------------------------------------


def test_bad_files_are_rejected_and_the_run_goes_on(tmp_path):
    src = imagefolder(tmp_path / "src", per_class=10)
    (src / "cat" / "empty.jpg").write_bytes(b"")
    data = img(tmp_path / "whole.jpg", size=(64, 64)).read_bytes()
    (src / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (src / "fox" / "notes.JPEG").write_text("this is not an image\n")
    m = prep(src, tmp_path / "out", max_rejected_fraction=0.2)
    reasons = {Path(r["path"]).name: r["reason"] for r in m["rejected"]}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notes.JPEG"}
    assert "0 bytes" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.JPEG"]
    assert all(Path(r["path"]).is_absolute() for r in m["rejected"])
    assert m["totals"] == {"train": 24, "val": 6, "rejected": 3}


@pytest.mark.parametrize("workers", [1, 2])
def test_too_many_rejected_raises_naming_files_and_fraction(tmp_path, workers):
    src = imagefolder(tmp_path / "src", per_class=6)
    for i in range(3):
        (src / "cat" / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError) as e:
        prep(src, tmp_path / "out", max_rejected_fraction=0.05, workers=workers)
    assert "broken_0.jpg" in str(e.value) and "max_rejected_fraction" in str(e.value) and "%" in str(e.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_empty_class_folder_raises_naming_it(tmp_path):
    src = imagefolder(tmp_path / "src")
    (src / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        prep(src, tmp_path / "out")


def test_class_with_only_bad_files_raises_naming_it(tmp_path):
    src = imagefolder(tmp_path / "src", per_class=20)
    for i in range(2):
        (src / "zebra" / f"z{i}.jpg").parent.mkdir(exist_ok=True)
        (src / "zebra" / f"z{i}.jpg").write_text("nope")
    with pytest.raises(DataError, match="zebra"):
        prep(src, tmp_path / "out", max_rejected_fraction=0.5)


def test_unknown_wnid_in_val_csv(tmp_path):
    src = imagenet(tmp_path / "src")
    csv = src / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace(f"00000001,{WNIDS[0]}", "00000001,n99999999"))
    with pytest.raises(DataError, match="n99999999") as e:
        prep(src, tmp_path / "out")
    assert "LOC_val_solution.csv" in str(e.value) and "line 2" in str(e.value)


def test_val_image_missing_from_csv(tmp_path):
    src = imagenet(tmp_path / "src")
    img(src / "val" / "ILSVRC2012_val_00000999.JPEG")
    with pytest.raises(DataError, match="ILSVRC2012_val_00000999.JPEG"):
        prep(src, tmp_path / "out")


def test_flat_val_without_csv(tmp_path):
    src = imagenet(tmp_path / "src")
    (src / "LOC_val_solution.csv").unlink()
    with pytest.raises(DataError, match="LOC_val_solution.csv"):
        prep(src, tmp_path / "out")


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prep(tmp_path / "nope", tmp_path / "out")


# --- conversions and statistics ------------------------------------------------------------------------------


def test_odd_modes_are_converted_to_rgb(tmp_path):
    src = imagefolder(tmp_path / "src", per_class=3, classes=("a", "b"))
    odd = src / "a"
    img(odd / "grey.JPEG", mode="L")
    img(odd / "cmyk.JPEG", mode="CMYK")
    img(odd / "rgba_png.JPEG", mode="RGBA", fmt="PNG")  # a PNG named .JPEG
    img(odd / "palette.png", mode="P", fmt="PNG")
    img(odd / "tall.jpg", size=(10, 40))
    Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(odd / "deep.png")  # 16-bit greyscale
    m = prep(src, tmp_path / "out", val_fraction=0.1)
    assert m["rejected"] == [] and m["totals"]["train"] + m["totals"]["val"] == 12
    for s in read_split(tmp_path / "out", "train") + read_split(tmp_path / "out", "val"):
        assert s["image"].shape == (3, S, S) and str(s["image"].dtype) == "torch.uint8"


def test_mean_std_on_known_colours(tmp_path):
    src = tmp_path / "src"
    for cls, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (src / cls).mkdir(parents=True)
        for i in range(4):  # PNG: lossless, so every pixel is exactly the colour
            Image.new("RGB", (30 + i, 20), colour).save(src / cls / f"{i}.png")  # distinct files, same colour
    m = prep(src, tmp_path / "out", val_fraction=0.25)
    assert m["totals"] == {"train": 6, "val": 2, "rejected": 0}  # 3 red + 3 blue in train
    assert np.allclose(m["mean"], [0.5, 0.0, 0.5], atol=1e-4)
    assert np.allclose(m["std"], [0.5, 0.0, 0.5], atol=1e-4)
    assert all(np.isfinite(m["mean"] + m["std"]))


def test_read_back_with_streaming_helpers(tmp_path):
    out = tmp_path / "out"
    prep(imagenet(tmp_path / "src"), out)
    info = read_prepared(out)
    assert info.classes == NAMES and info.wnids == WNIDS and info.num_classes == 3 and info.image_size == S
    assert info.counts == {"train": 15, "val": 6, "rejected": 0} and len(info.mean) == 3
    train = read_split(out, "train")
    assert len(train) == 15 and sorted(s["label"] for s in train) == [0] * 5 + [1] * 5 + [2] * 5
    assert all(isinstance(s["label"], int) and s["image"].shape == (3, S, S) for s in train)
    assert len([f for f in os.listdir(out / "train") if f.endswith(".bin")]) > 1  # many chunks, not one
    with pytest.raises(DataError, match="manifest.json"):
        read_prepared(tmp_path)


# --- staging, workers, helpers -------------------------------------------------------------------------------


def test_failed_prep_leaves_previous_output_untouched(tmp_path):
    out = tmp_path / "prepared"
    first = prep(imagefolder(tmp_path / "good"), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = imagefolder(tmp_path / "bad")
    (bad / "empty").mkdir()
    with pytest.raises(DataError):
        prep(bad, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "prepared"]  # no staging left
    # a good run replaces the output
    second = prep(imagefolder(tmp_path / "good2", per_class=9), out)
    assert second["totals"]["train"] != first["totals"]["train"]
    assert read_prepared(out).counts == second["totals"]


def test_staged_output_restores_after_error(tmp_path):
    out = tmp_path / "o"
    with staged_output(out) as stage:
        (stage / "x").write_text("1")
        (stage / "manifest.json").write_text(json.dumps({"producer": "visionflow-prep"}))
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "x").write_text("2")
            raise RuntimeError("boom")
    assert (out / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_two_workers_give_the_same_samples(tmp_path):
    src = imagenet(tmp_path / "src", per_class=8)
    (src / "train" / WNIDS[1] / "bad.JPEG").write_text("x")
    m1 = prep(src, tmp_path / "w1", workers=1, max_rejected_fraction=0.1)
    m2 = prep(src, tmp_path / "w2", workers=2, max_rejected_fraction=0.1)
    assert {k: v for k, v in m1.items() if k != "created"} == {k: v for k, v in m2.items() if k != "created"}
    for split in ("train", "val"):
        a, b = read_split(tmp_path / "w1", split), read_split(tmp_path / "w2", split)
        assert [s["label"] for s in a] == [s["label"] for s in b]
        assert all(bool((x["image"] == y["image"]).all()) for x, y in zip(a, b))


def test_chunk_size_targets_many_chunks():
    assert chunk_size_for(60, 3 * 64 * 64) == 1
    assert chunk_size_for(6400, 3 * 64 * 64) == 100
    assert chunk_size_for(1_300_000, 3 * 64 * 64) == 64 * 2**20 // (3 * 64 * 64)  # byte cap: ~240 chunks


def test_save_grid_accepts_arrays_and_pil(tmp_path):
    images = [np.zeros((3, 8, 8), np.uint8), np.full((8, 8, 3), 255, np.uint8), Image.new("L", (5, 9))]
    path = save_grid(images, ["chw", "a very long caption that must be shortened", "pil"], tmp_path / "g.png")
    with Image.open(path) as g:
        assert g.mode == "RGB" and g.width > 0


def test_pool_workers_use_default_signal_handlers():
    import signal

    from lightning_modules.data.imagenet_prep import _pool

    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # like Dagster's handler in the parent
    try:
        with _pool(2) as pool:
            assert pool.submit(signal.getsignal, signal.SIGTERM).result() == signal.SIG_DFL
            assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stale_swap_of_a_dead_run_is_restored(tmp_path):
    out = tmp_path / "o"
    old = tmp_path / ".o.old-999999999"  # a run killed between its two renames (no such pid)
    old.mkdir()
    (old / "x").write_text("good")
    (old / "manifest.json").write_text(json.dumps({"producer": "visionflow-prep"}))
    (tmp_path / ".o.staging-999999999").mkdir()
    (tmp_path / ".o.staging-999999999" / ".visionflow-staging").touch()
    with pytest.raises(RuntimeError):
        with staged_output(out):
            raise RuntimeError("boom")
    assert (out / "x").read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]
