"""The detection stage as a Lightning job: data module, DetectionModule (multi-scale, EMA, backbone
transfer), the CLI job alone and under torchrun DDP, `visionflow predict` and `visionflow evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.config import load_config
from lightning_modules.errors import ConfigError, DataError

pytestmark = pytest.mark.slow  # detector training jobs, one under torchrun

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "yolov3-cpu.yaml"
# A tiny net and input: each job takes seconds.
TINY = [
    "model.width=0.25",
    "model.small_input=false",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "optim.freeze_body_epochs=0",
    "optim.warmup_epochs=0",
    "trainer.log_every_n_steps=1",
    "trainer.grad_monitor_every_n_steps=2",
]


@pytest.fixture(scope="module")
def prepared_detection(tmp_path_factory) -> Path:
    """12 training, 4 validation and 4 test images of the generated detection set, prepared."""
    from lightning_modules.data.detection_prep import prep_detection
    from lightning_modules.data.synth import synthesize

    raw = tmp_path_factory.mktemp("raw")
    synthesize(
        raw,
        classes=2,
        per_class=1,
        val_per_class=1,
        transfer_classes=2,
        transfer_per_class=1,
        transfer_val_per_class=1,
        det_train=12,
        det_val=4,
        det_test=4,
        seed=3,
    )
    out = tmp_path_factory.mktemp("prepared") / "detection"
    prep_detection(raw / "detection", out, fmt="yolo", anchor_image_size=64)
    return out


def _env(threads: int = 1) -> dict[str, str]:
    return {**os.environ, "VISIONFLOW_THREADS": str(threads), "MPLBACKEND": "Agg"}


def _train(data: Path, out: Path, uri: str, *sets: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "lightning_modules.train",
        str(CONFIG),
        "--data",
        str(data),
        "--out",
        str(out),
        "--set",
        f"tracking.tracking_uri={uri}",
    ]
    for s in [*TINY, *sets]:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _datamodule(data: Path, *sets: str):
    from lightning_modules.detection.data import DetectionDataModule

    cfg = load_config(CONFIG, [*TINY, *sets])
    dm = DetectionDataModule(data, cfg.data, cfg.detection)
    dm.setup("fit")
    return dm


def test_train_batches_are_uint8_squares_with_boxes_inside(prepared_detection: Path) -> None:
    torch.manual_seed(0)
    dm = _datamodule(prepared_detection, "detection.mosaic_prob=1.0")
    assert dm.train_ds.mosaic_extras == 3
    images, targets = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, 64, 64)
    assert len(targets) == images.shape[0]
    for t in targets:
        b = t["boxes"]
        assert b.shape[1] == 4 and len(b) == len(t["labels"])
        assert (b >= 0).all() and (b <= 64).all() and (b[:, 2:] > b[:, :2]).all()
        assert ((t["labels"] >= 0) & (t["labels"] < dm.num_classes)).all()


def test_val_boxes_map_back_to_the_prepared_rows(prepared_detection: Path) -> None:
    from lightning_modules.detection.augment import unletterbox_boxes

    dm = _datamodule(prepared_detection)
    for _images, targets in dm.val_dataloader():
        for t in targets:
            row = dm.val_ds.rows[t["image_id"]]
            assert t["orig_size"] == (row["height"], row["width"])
            back = unletterbox_boxes(t["boxes"], t["scale"], t["pad"], t["orig_size"])
            assert torch.allclose(back, torch.tensor(row["boxes"]).reshape(-1, 4), atol=1.5)


def test_multiscale_changes_size_every_k_batches_and_scales_boxes() -> None:
    from lightning_modules.detection.module import DetectionModule

    anchors = [[4, 4]] * 5
    module = DetectionModule(
        model={"name": "darknet19", "width": 0.25},
        optim={"name": "sgd", "lr": 0.01},
        detection={"version": "yolov2", "multiscale": [32, 64, 96], "multiscale_every": 2},
        num_classes=3,
        image_size=64,
        anchors=anchors,
        seed=3,
    )
    images = torch.zeros(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 8, 32, 32]]), "labels": torch.tensor([1])}] * 2
    sizes = []
    for step in range(12):
        out, tg = module._rescale(images, targets, step=step)
        k = out.shape[-1] / 64
        assert torch.allclose(tg[0]["boxes"], targets[0]["boxes"] * k)
        sizes.append(out.shape[-1])
    assert all(sizes[i] == sizes[i + 1] for i in range(0, 12, 2))  # constant within each period of 2
    assert len(set(sizes)) > 1  # and it does change
    again = [module._rescale(images, targets, step=s)[0].shape[-1] for s in range(12)]
    assert again == sizes  # a function of the step: every DDP rank picks the same size


def test_detector_starts_from_a_backbone_checkpoint(tmp_path: Path) -> None:
    from lightning_modules.detection.module import DetectionModule
    from lightning_modules.models import build_model

    net = build_model("resnet18", num_classes=7, width=0.25)
    torch.save(net.state_dict(), tmp_path / "backbone.pt")
    model = {"name": "resnet18", "width": 0.25, "pretrained_checkpoint": str(tmp_path / "backbone.pt")}
    module = DetectionModule(
        model=model, optim={"name": "sgd", "lr": 0.01}, detection={"version": "yolov1"}, num_classes=3, image_size=64
    )
    got = module.detector.backbone.state_dict()
    for key, value in net.state_dict().items():
        if not key.startswith("head.fc."):
            assert torch.equal(got[key], value), key
    with pytest.raises(ConfigError, match="does not fit"):
        DetectionModule(
            model={**model, "width": 0.5},
            optim={"name": "sgd", "lr": 0.01},
            detection={"version": "yolov1"},
            num_classes=3,
            image_size=64,
        )


def test_config_and_data_errors_name_the_problem(
    prepared_detection: Path, tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(CONFIG, ["data.image_size=70"])
    with pytest.raises(ConfigError, match="detection.ema_decay"):
        load_config(CONFIG, ["detection.ema_decay=1.5"])
    done = _train(prepared_detection, tmp_path / "a", mlflow_uri, "detection.version=yolov9")
    assert done.returncode == 2 and "detection.version='yolov9' is unknown" in done.stderr
    done = _train(tiny_prepared_imagenet, tmp_path / "b", mlflow_uri)
    assert done.returncode == 2 and "manifest.json" in done.stderr and "'detection'" in done.stderr
    assert not (tmp_path / "b").exists()
    from lightning_modules.detection.data import read_prepared_detection

    with pytest.raises(DataError, match="no manifest.json"):
        read_prepared_detection(tmp_path)


@pytest.fixture(scope="module")
def trained(prepared_detection: Path, tmp_path_factory, mlflow_uri: str) -> Path:
    run = tmp_path_factory.mktemp("det") / "run"
    done = _train(prepared_detection, run, mlflow_uri, "trainer.max_epochs=3", "detection.ema_tau=2")
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_job_trains_tracks_and_keeps_ema_weights(trained: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    result = json.loads((trained / "result.json").read_text())
    assert result["status"] == "finished" and result["task"] == "detection"
    assert result["monitor"] == "val/fitness" and result["monitor_mode"] == "max"
    rows = result["history"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["val_map_50"] is not None and r["val_loss"] is not None and r["train_box"] is not None for r in rows)
    # (9 augmented steps are too few to show learning; test_detectors checks each loss decreases)
    assert all(r["train_loss"] == r["train_loss"] and r["train_loss"] > 0 for r in rows)
    # the best checkpoint holds the EMA weights; the raw ones are kept for resuming
    ckpt = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)
    assert "current_model_state" in ckpt
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight") and "conv" in k)
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])
    figures = {Path(p).name for p in result["figures"]}
    assert {"pr_curves.png", "confusion_matrix.png", "detections.png", "learning_curves.png"} <= figures
    run = MlflowClient(mlflow_uri).get_run(result["mlflow_run_id"])
    assert run.data.params["detection.version"] == "yolov3" and run.data.tags["task"] == "detection"
    assert {"val/map_50", "val/map", "train/box", "val_map_50"} <= set(run.data.metrics)
    arts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(result["mlflow_run_id"])}
    assert "detections.png" in arts


def test_predict_writes_boxes_and_drawings_and_never_overwrites(
    trained: Path, prepared_detection: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    images = prepared_detection / "images"
    out = tmp_path / "pred"
    cmd = [
        sys.executable,
        "-m",
        "lightning_modules.cli",
        "predict",
        str(ckpt),
        str(images),
        "--out",
        str(out),
        "--conf",
        "0.001",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pred = json.loads((out / "predictions.json").read_text())
    files = sorted(p for p in images.rglob("*.png"))
    assert [Path(r["image"]).name for r in pred["images"]] == [f.name for f in files]
    from PIL import Image

    for row in pred["images"]:
        w, h = Image.open(row["image"]).size
        for d in row["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h  # the image's own pixels, not the letterbox's
            assert d["score"] >= 0.001 and d["class"]
    assert {p.stem for p in (out / "drawn").iterdir()} == {f.stem for f in files}
    before = (out / "predictions.json").read_bytes()
    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert (out / "predictions.json").read_bytes() == before


def test_evaluate_scores_a_detector_checkpoint_in_original_pixels(
    trained: Path, prepared_detection: Path, tmp_path: Path
) -> None:
    from lightning_modules.detection.cocoio import load_coco_gt, load_coco_results
    from lightning_modules.detection.metrics import coco_map

    ckpt = trained / "checkpoints" / "best.ckpt"
    cmd = [
        sys.executable,
        "-m",
        "lightning_modules.cli",
        "evaluate",
        str(ckpt),
        "--data",
        str(prepared_detection),
        "--split",
        "train",
        "--out",
        str(tmp_path / "ev"),
        "--json",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert {"map", "map_50", "voc07_ap50", "voc10_ap50", "per_class"} <= set(result)
    assert "Average Precision" not in done.stderr  # quiet evaluator: COCOeval's table stays out of the console
    # the COCO files it wrote give the same numbers through the generic path (detect-eval's)
    gt = load_coco_gt(tmp_path / "ev" / "gt_coco.json")
    again = coco_map(gt.items, load_coco_results(tmp_path / "ev" / "pred_coco.json", gt))
    assert again["map"] == pytest.approx(result["map"], abs=1e-6)
    assert (tmp_path / "ev" / "detections.png").is_file() and (tmp_path / "ev" / "pr_curves.png").is_file()


def test_onnx_export_of_the_detector_predicts_what_the_checkpoint_predicts(
    trained: Path, prepared_detection: Path, tmp_path: Path
) -> None:
    """The export carries normalisation + network + decoding; NMS is the shared postprocess, so the
    detections from the ONNX file and from the checkpoint agree box for box."""
    from lightning_modules.detection.evaluation import predict
    from lightning_modules.export.onnx_export import export

    ckpt = trained / "checkpoints" / "best.ckpt"
    doc = export(ckpt, tmp_path / "onnx")  # parity data: the run's own prepared set (job.json)
    assert doc["task"] == "detection" and doc["parity"]["data"] == str(prepared_detection)
    assert doc["parity"]["split"] == "test" and doc["parity"]["images"] == 4
    assert doc["parity"]["max_abs_diff"] <= 1e-4 and set(doc["parity"]["per_output"]) >= {"boxes", "scores"}
    assert doc["postprocess"]["function"] == "lightning_modules.detection.decode.postprocess"
    # Same NMS, same settings: the export's raw outputs give identical detections through either object.
    from lightning_modules.detection.evaluation import load_predictor
    from lightning_modules.export.runtime import OnnxDetector

    torch_det, onnx_det = load_predictor(ckpt), OnnxDetector(tmp_path / "onnx" / "model.onnx")
    assert onnx_det.nms_settings() == torch_det.nms_settings()
    images = torch.randint(0, 256, (3, 3, torch_det.image_size, torch_det.image_size), dtype=torch.uint8)
    boxes, scores = onnx_det.run(images)
    for a, b in zip(
        onnx_det.postprocess(boxes, scores, images.shape[-2:]), torch_det.postprocess(boxes, scores, images.shape[-2:])
    ):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    # `visionflow predict` on image files, from the checkpoint and from the export. This 3-epoch detector
    # scores every box near 0.005, so near-ties may swap places: compare the score lists, sorted.
    files = sorted(p for p in (prepared_detection / "images" / "val").rglob("*") if p.suffix in (".jpg", ".png"))
    assert files
    rows = {}
    for kind, weights in (("ckpt", ckpt), ("onnx", tmp_path / "onnx" / "model.onnx")):
        path = predict(weights, files, tmp_path / f"pred-{kind}", conf=0.001, draw=0)
        rows[kind] = json.loads(path.read_text())["images"]
    for a, b in zip(rows["ckpt"], rows["onnx"], strict=True):
        assert a["image"] == b["image"] and len(a["detections"]) == len(b["detections"]) > 0
        sa, sb = (sorted(d["score"] for d in r["detections"]) for r in (a, b))
        assert max(abs(x - y) for x, y in zip(sa, sb)) <= 2e-4


def test_ddp_fit_of_the_detector_under_torchrun(prepared_detection: Path, tmp_path: Path, mlflow_uri: str) -> None:
    done = _train(
        prepared_detection,
        tmp_path / "ddp",
        mlflow_uri,
        "trainer.max_epochs=1",
        "trainer.devices=2",
        "detection.multiscale=[32,64]",
        "detection.multiscale_every=1",
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["status"] == "finished" and result["world_size"] == 2 and result["effective_batch"] == 8
    assert result["history"][0]["val_map_50"] is not None
