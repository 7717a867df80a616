"""The orchestrated chain for real, on tiny data: every asset through the real launcher (torchrun + Pipes),
metadata from rank 0 only, MLflow lineage tags, the transfer report, evaluation and champion promotion,
and a killed training step that Dagster retries and that resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from mlflow.tracking import MlflowClient

from lightning_modules.data import versioning
from lightning_modules.steps.specs import DetectionEvaluationSettings
from pipelines.assets.data import prepared_detection, prepared_imagenet, prepared_transfer
from pipelines.assets.detection import DETECTION_ASSETS, yolo_detector
from pipelines.assets.detection_transfer import DETECTION_TRANSFER_ASSETS
from pipelines.assets.evaluation import EVALUATION_ASSETS, classification_evaluation
from pipelines.assets.training import TRAINING_ASSETS, pretrained_backbone
from pipelines.launcher import LocalLauncher
from pipelines.resources import DvcResource, MlflowResource, ProjectResource

pytestmark = pytest.mark.slow  # the whole chain through Dagster, torchrun and a killed step

ROOT = Path(__file__).resolve().parents[2]
# Big enough to learn in seconds (the evaluation keeps its default gate: top-1 >= 0.53 on 3 classes).
TINY = dict(
    classes=4,
    per_class=40,
    val_per_class=8,
    transfer_classes=3,
    transfer_per_class=32,
    transfer_val_per_class=8,
    transfer_test_per_class=8,
    det_train=8,
    det_val=4,
    det_test=4,
)
# The tiny chain augments on the device path (the module's on_after_batch_transfer; the loader path is the
# CPU default, run by every other training test). With 16 transfer images per class, 3 val and 5 epochs its
# 3-class classifier sat at the edge of the checks below: test top-1 0.625 on one machine, 0.417 and under
# the gate (0.53) on another (other CPU kernels, other rounding); 0.708 with seed 6. With 32 per class, 8 val (a
# steadier best checkpoint) and 10 + 12 epochs: 0.875, 0.792 and 0.75 for seeds 5, 6, 7 (24 test images:
# one image is 0.04). Learning itself is asserted in test_learning.py.
SMALL_NET = [
    "data.image_size=32",
    "model.width=0.25",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.augment_on=device",
]
PREP = {"config": {"image_size": 32, "workers": 1}}
PRETRAIN_EPOCHS = 10
TRANSFER_EPOCHS = 12


def _resources(root: Path) -> dict:
    return {
        "project": ProjectResource(root=str(root)),
        "dvc": DvcResource(root=str(root)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"),
        "launcher": LocalLauncher(nproc_per_node=1),
    }


def _train(config: str, epochs: int, **extra) -> dict:
    return {
        "config": {
            "config_file": str(ROOT / "configs" / config),
            "overrides": [f"trainer.max_epochs={epochs}", *SMALL_NET],
            **extra,
        }
    }


@pytest.fixture(scope="module")
def chain(tmp_path_factory, versioned_project):
    root = versioned_project(tmp_path_factory.mktemp("chain"), seed=5, **TINY)
    run_config = {
        "ops": {
            "prepared_imagenet": PREP,
            "prepared_transfer": PREP,
            # Pretraining with 2 torchrun ranks: metadata must still arrive once, from rank 0. The smoke config
            # learns in 10 short epochs (measured: val 0.78 and 0.50 on 4 classes, seeds 5 and 6).
            "pretrained_backbone": _train("smoke-classify.yaml", PRETRAIN_EPOCHS, nproc_per_node=2),
            "transfer_finetuned": _train("transfer-cpu.yaml", TRANSFER_EPOCHS),
            "scratch_baseline": _train("transfer-cpu.yaml", TRANSFER_EPOCHS),
        }
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [prepared_imagenet, prepared_transfer, *TRAINING_ASSETS, *EVALUATION_ASSETS],
            partition_key="resnet18",
            instance=instance,
            resources=_resources(root),
            run_config=run_config,
        )
        yield root, instance, result


def _meta(result, key: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    assert len(events) == 1, f"{key}: {len(events)} materializations (only rank 0 may report)"
    return {k: v.value for k, v in events[0].materialization.metadata.items()}


def test_every_stage_materializes_once_with_its_metadata(chain) -> None:
    root, _, result = chain
    assert result.success
    pre = _meta(result, "pretrained_backbone")
    assert Path(pre["best_checkpoint"]).is_file() and 0.0 <= pre["val_acc1"] <= 1.0
    assert pre["learning_curves"].startswith("![learning_curves](data:image/png;base64,")
    assert pre["data_version"] == versioning.read_data_version(root / "data.dvc")
    assert pre["mlflow_run"].startswith("http://127.0.0.1:5000/#/experiments/")
    for key in ("transfer_finetuned", "scratch_baseline"):
        meta = _meta(result, key)
        assert len(meta["history"]) == TRANSFER_EPOCHS and Path(meta["best_checkpoint"]).is_file()
    report = _meta(result, "transfer_report")
    assert {"gain_start", "gain_slope", "gain_asymptote", "transfer_asymptote", "scratch_asymptote"} <= set(report)


def test_mlflow_runs_carry_the_lineage_tags(chain) -> None:
    root, _, result = chain
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    pre, tr = _meta(result, "pretrained_backbone"), _meta(result, "transfer_finetuned")
    pre_run, tr_run = client.get_run(pre["mlflow_run_id"]), client.get_run(tr["mlflow_run_id"])
    version = versioning.read_data_version(root / "data.dvc")
    for run, asset in ((pre_run, "pretrained_backbone"), (tr_run, "transfer_finetuned")):
        tags = run.data.tags
        assert tags["dagster_run_id"] == result.run_id and tags["dagster_asset_key"] == asset
        assert tags["data_version"] == version and tags["git_sha"]
    assert pre_run.data.tags["dagster_partition"] == "resnet18"
    assert tr_run.data.tags["init"] == "pretrained" and tr_run.data.tags["pretrained_run_id"] == pre_run.info.run_id
    assert tr_run.data.params["model.pretrained_checkpoint"] == pre["best_checkpoint"]
    # Both DDP ranks trained, one MLflow run logged it.
    assert len(client.search_runs([pre_run.info.experiment_id])) == 1
    assert pre_run.data.params.get("effective_batch") == "32" or pre_run.data.metrics.get("effective_batch") == 32


def _checks(result, key: str) -> dict:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations() if e.asset_key.to_user_string() == key}


def test_evaluation_gate_is_the_default_floor_and_promotes_only_a_better_model(chain) -> None:
    root, instance, result = chain
    first = _meta(result, "classification_evaluation")
    # The default gate (no floor lowered for the test): max(0.4, chance 1/3 + 0.2); the tiny chain clears it.
    assert first["test_acc1"] >= 0.6, f"the tiny chain did not learn: test top-1 {first['test_acc1']}"
    assert _checks(result, "classification_evaluation") == {"accuracy_floor": True, "no_nan": True}
    assert first["promoted"] is True and first["promotion"] == "no champion yet" and first["images"] == 3 * 8
    _assert_carries_onnx(root, "visionflow-classifier", first)
    # The same model evaluated again on the same data is not better: the alias stays.
    again = dg.materialize([classification_evaluation], instance=instance, resources=_resources(root))
    second = _meta(again, "classification_evaluation")
    assert second["promoted"] is False and "is not shown better than champion" in second["promotion"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert (
        str(client.get_model_version_by_alias("visionflow-classifier", "champion").version)
        == first["registered_version"]
    )
    # A gate the model cannot reach fails (blocking), and a model that fails its gates is never promoted.
    strict = dg.materialize(
        [classification_evaluation],
        instance=instance,
        resources=_resources(root),
        run_config={"ops": {"classification_evaluation": {"config": {"accuracy_floor": 1.01}}}},
        raise_on_error=False,
    )
    assert _checks(strict, "classification_evaluation")["accuracy_floor"] is False
    assert (
        str(client.get_model_version_by_alias("visionflow-classifier", "champion").version)
        == first["registered_version"]
    )


def test_detection_stage_trains_on_the_pretrained_backbone_and_registers(chain) -> None:
    root, instance, result = chain
    pre = _meta(result, "pretrained_backbone")
    tiny = [
        "trainer.max_epochs=2",
        "data.image_size=64",
        "data.batch_size=4",
        "data.num_workers=0",
        "optim.freeze_body_epochs=1",
        "optim.warmup_epochs=0",
    ]
    run_config = {
        "ops": {
            "prepared_detection": {"config": {"anchor_image_size": 64, "bpr_floor": 0.0}},
            "yolo_detector": {"config": {"config_file": str(ROOT / "configs" / "yolov3-cpu.yaml"), "overrides": tiny}},
        }
    }
    det = dg.materialize(
        [prepared_detection, *DETECTION_ASSETS],
        partition_key="yolov3",
        instance=instance,
        resources=_resources(root),
        run_config=run_config,
        raise_on_error=False,
    )
    trained, evaluated = _meta(det, "yolo_detector"), _meta(det, "detection_evaluation")
    assert len(trained["history"]) == 2 and "val_map_50" in trained["history"][0]
    assert trained["pr_curves"].startswith("![pr_curves](data:image/png;base64,")
    # Scored on the held-out test split (selection only ever saw val).
    assert {"test_map", "test_map_50", "test_map_75", "test_voc07_ap50", "registered_version", "promoted"} <= set(
        evaluated
    )
    assert evaluated["images"] == TINY["det_test"]
    assert evaluated["registered_model"] == "visionflow-detector-yolov3"
    # The default floor, not lowered: 2 epochs on 8 images may or may not clear it, but the gate and the
    # promotion must agree with the number (learning itself is asserted in test_learning.py).
    passed = evaluated["test_map_50"] >= DetectionEvaluationSettings().map50_floor
    assert _checks(det, "detection_evaluation") == {"map50_floor": passed, "no_nan": True}
    assert evaluated["promoted"] is passed
    assert det.success is passed  # a failed blocking gate fails the run
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(trained["mlflow_run_id"])
    # it started from the backbone the chain pretrained, with the same network settings
    assert run.data.tags["pretrained_run_id"] == pre["mlflow_run_id"] and run.data.tags["architecture"] == "resnet18"
    assert run.data.params["model.pretrained_checkpoint"] == pre["best_checkpoint"]
    assert run.data.params["model.width"] == "0.25" and run.data.params["detection.version"] == "yolov3"
    # the registered version rebuilds without pickle (weights + settings) and detects on uint8 images
    import torch

    from lightning_modules.detection.evaluation import load_predictor
    from lightning_modules.tracking import model_registry as registry

    uri = f"sqlite:///{root / 'mlflow.db'}"
    path = registry.download(uri, f"models:/visionflow-detector-yolov3/{evaluated['registered_version']}", "detector")
    out = load_predictor(path)(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert out.shape == (1, 100, 6)
    _assert_carries_onnx(root, "visionflow-detector-yolov3", evaluated)


def _assert_carries_onnx(root: Path, name: str, meta: dict) -> None:
    """The registered version holds its ONNX export beside the weights, checked on the test images."""
    import mlflow

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version(name, meta["registered_version"])
    assert version.tags["onnx"] == "model/model.onnx" and meta["onnx"] == version.tags["onnx_parity"]
    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(name, version.version),
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        )
    )
    doc = json.loads((folder / "export.json").read_text())
    assert (folder / "model.onnx").stat().st_size > 0 and doc["parity"]["split"] == "test"
    assert doc["parity"]["max_abs_diff"] <= 1e-4


def _kill_when_checkpointed(run_root: Path, stop: threading.Event, killed: list) -> None:
    """SIGKILL the training process once a last.ckpt exists mid-run (first attempt only)."""
    while not stop.is_set() and not killed:
        if any(run_root.rglob("last.ckpt")):
            for proc in psutil.Process(os.getpid()).children(recursive=True):
                try:
                    cmd = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if "lightning_modules.train" in cmd and "torch.distributed.run" not in cmd:
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
        time.sleep(0.05)


def test_killed_training_step_is_retried_and_resumes_from_its_checkpoint(tmp_path: Path, versioned_project) -> None:
    root = versioned_project(tmp_path, seed=5, **TINY)
    dg.materialize([prepared_imagenet], resources=_resources(root), run_config={"ops": {"prepared_imagenet": PREP}})
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_when_checkpointed, args=(root / "runs", stop, killed), daemon=True)
    watcher.start()
    epochs = 4
    config = _train("pretrain-cpu.yaml", epochs)
    config["config"]["overrides"].append("trainer.checkpoint_every_n_steps=2")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [pretrained_backbone],
            partition_key="resnet18",
            instance=instance,
            resources=_resources(root),
            run_config={"ops": {"pretrained_backbone": config}},
        )
    stop.set()
    assert killed, "the training process was never killed"
    assert result.success
    assert any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events), "Dagster did not retry"
    meta = _meta(result, "pretrained_backbone")
    run_dir = Path(meta["run_dir"])
    assert (run_dir / "mlflow_run_id").read_text().strip() == meta["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_run(meta["mlflow_run_id"]).info.experiment_id
    assert len(client.search_runs([exp])) == 1, "the retry continued the same MLflow run"
    manifest = json.loads((root / "prepared" / "imagenet" / "manifest.json").read_text())
    steps_per_epoch = -(-manifest["totals"]["train"] // 16)
    assert meta["global_step"] == epochs * steps_per_epoch
    assert [h["epoch"] for h in meta["history"]] == list(range(1, epochs + 1)), "history survives the resume"


def test_detection_transfer_report_compares_the_detector_with_its_scratch_twin(chain) -> None:
    root, instance, _ = chain
    tiny = ["trainer.max_epochs=2", "data.image_size=64", "data.batch_size=4", "data.num_workers=0"]
    detector = {"config_file": str(ROOT / "configs" / "yolov3-cpu.yaml"), "overrides": tiny}
    res = dg.materialize(
        [prepared_detection, yolo_detector, *DETECTION_TRANSFER_ASSETS],
        partition_key="yolov3",
        instance=instance,
        resources=_resources(root),
        run_config={
            "ops": {
                "prepared_detection": {"config": {"anchor_image_size": 64, "bpr_floor": 0.0}},
                "yolo_detector": {"config": detector},
                "detection_scratch_baseline": {"config": detector},
            }
        },
    )
    report, scratch = _meta(res, "detection_transfer_report"), _meta(res, "detection_scratch_baseline")
    assert report["metric"] == "val_map"
    assert report["curves"].startswith("![")
    # the gains are the differences of the two curves' own statistics
    for k in ("start", "slope", "asymptote"):
        assert report[f"gain_{k}"] == pytest.approx(report[f"transfer_{k}"] - report[f"scratch_{k}"], abs=2e-4)
    assert report["scratch_asymptote"] == pytest.approx(max(h["val_map"] for h in scratch["history"]), abs=1e-4)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(scratch["mlflow_run_id"])
    assert run.data.tags["init"] == "scratch" and run.data.params.get("model.pretrained_checkpoint") in (None, "None")
    assert run.data.params["optim.freeze_body_epochs"] == "0"
