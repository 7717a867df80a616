"""ONNX export of a classifier: the graph agrees with PyTorch on real prepared images, takes any batch size,
and `visionflow predict` gives the same answers from the checkpoint and from the export.

(The detector's export is tested on a trained detector in tests/detection/test_detection_training.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.export import onnx_export
from lightning_modules.export.runtime import OnnxClassifier

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def classifier_checkpoint(tiny_prepared_imagenet: Path, tmp_path_factory) -> Path:
    """A classifier checkpoint in the job's format (hyper-parameters + state_dict), with untrained weights:
    parity is about two runtimes computing the same function, whatever the weights."""
    from lightning_modules.classification.module import ClassificationModule
    from lightning_modules.config import LossConfig, ModelConfig, OptimConfig
    from lightning_modules.data.streaming import read_prepared

    info = read_prepared(tiny_prepared_imagenet)
    torch.manual_seed(0)
    module = ClassificationModule(
        model=ModelConfig(name="resnet18", width=0.25, small_input=True).model_dump(),
        optim=OptimConfig().model_dump(),
        loss=LossConfig().model_dump(),
        num_classes=info.num_classes,
        mean=info.mean,
        std=info.std,
        class_names=list(info.classes),
        image_size=info.image_size,
    )
    for m in module.modules():  # non-trivial BatchNorm statistics, so the export must carry them right
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("clf") / "best.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def exported(classifier_checkpoint: Path, tiny_prepared_imagenet: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    onnx_export.export(classifier_checkpoint, out, data=tiny_prepared_imagenet)
    return out


def test_classifier_export_matches_pytorch_on_real_images(exported: Path, tiny_prepared_imagenet: Path) -> None:
    doc = json.loads((exported / "export.json").read_text())
    size = json.loads((tiny_prepared_imagenet / "manifest.json").read_text())["image_size"]
    assert sorted(p.name for p in exported.iterdir()) == ["export.json", "model.onnx"]
    assert doc["task"] == "classification" and doc["opset"] == onnx_export.OPSET
    assert doc["input"] == {**doc["input"], "name": "images", "dtype": "uint8", "shape": ["batch", 3, size, size]}
    assert doc["input"]["normalisation"]["in_graph"] and len(doc["input"]["normalisation"]["mean"]) == 3
    parity = doc["parity"]
    assert parity["split"] == "val" and parity["images"] == 16  # the tiny set has no test split
    assert 0 <= parity["max_abs_diff"] <= 1e-4 and parity["tolerance"] == 1e-4


def test_the_export_takes_any_batch_size_and_agrees_with_the_checkpoint(
    exported: Path, classifier_checkpoint: Path, tiny_prepared_imagenet: Path
) -> None:
    from lightning_modules.classification.evaluate import load_classifier, split_batches

    torch_model = load_classifier(classifier_checkpoint)
    onnx_model = OnnxClassifier(exported / "model.onnx")
    images, _ = next(split_batches(tiny_prepared_imagenet, "train", 5, torch_model.image_size))
    for batch in (images[:1], images[:5]):  # exported with a batch of 2: neither size was traced
        with torch.no_grad():
            expected = torch_model(batch)
        got = onnx_model(batch)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-4
    assert onnx_model.class_names == torch_model.class_names and onnx_model.image_size == torch_model.image_size


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_modules.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_predict_gives_the_same_classes_from_checkpoint_and_export(
    exported: Path, classifier_checkpoint: Path, tiny_raw_data: Path, tmp_path: Path
) -> None:
    images = tiny_raw_data / "imagenet" / "val"
    runs = {}
    for kind, weights in (("ckpt", classifier_checkpoint), ("onnx", exported / "model.onnx")):
        done = _cli("predict", str(weights), str(images), "--out", str(tmp_path / kind), "--top-k", "3")
        assert done.returncode == 0, done.stderr[-2000:]
        runs[kind] = json.loads((tmp_path / kind / "predictions.json").read_text())
    a, b = runs["ckpt"]["images"], runs["onnx"]["images"]
    assert len(a) == len(list(images.rglob("*.JPEG"))) > 0
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a["image"] == row_b["image"] and len(row_a["top"]) == 3
        assert [t["class"] for t in row_a["top"]] == [t["class"] for t in row_b["top"]]
        assert all(abs(x["prob"] - y["prob"]) <= 2e-5 for x, y in zip(row_a["top"], row_b["top"]))
    assert runs["onnx"]["task"] == runs["ckpt"]["task"] == "classification"


def test_export_refuses_a_used_folder_and_names_bad_input(
    classifier_checkpoint: Path, tiny_prepared_imagenet: Path, tmp_path: Path
) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    done = _cli("export", str(classifier_checkpoint), "--out", str(used), "--data", str(tiny_prepared_imagenet))
    assert done.returncode == 2 and "not empty" in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    done = _cli("export", str(junk), "--out", str(tmp_path / "x"), "--data", str(tiny_prepared_imagenet))
    assert done.returncode == 2 and str(junk) in done.stderr and "Traceback" not in done.stderr
    # A lone model.onnx without its export.json cannot be run blind.
    lone = tmp_path / "lone" / "model.onnx"
    lone.parent.mkdir()
    lone.write_bytes(b"")
    done = _cli("predict", str(lone), str(tiny_prepared_imagenet), "--out", str(tmp_path / "p"))
    assert done.returncode == 2 and "export.json" in done.stderr and "Traceback" not in done.stderr


def test_an_export_that_disagrees_is_refused_and_leaves_nothing(
    classifier_checkpoint: Path, tiny_prepared_imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # any difference, even none, is too much
    out = tmp_path / "refused"
    with pytest.raises(onnx_export.ExportError, match="differs from the PyTorch model"):
        onnx_export.export(classifier_checkpoint, out, data=tiny_prepared_imagenet)
    assert not out.exists() and not any(p.name.startswith(".export-") for p in tmp_path.iterdir())
