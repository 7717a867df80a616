"""The classification training job: configs, every backbone/activation/loss, tracking, resume, guards."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_modules.config import load_config
from lightning_modules.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke-classify.yaml"

# Small and fast: 32 px, batch 16, no loader workers, no gradient plots.
FAST = [
    "--set",
    "data.num_workers=0",
    "--set",
    "data.batch_size=16",
    "--set",
    "data.image_size=32",
    "--set",
    "trainer.grad_monitor_every_n_steps=0",
    "--set",
    "trainer.fast_dev_run=true",
    "--set",
    "model.width=0.25",
]


def _train(config: Path, data: Path, out: Path, *sets: str) -> int:
    from lightning_modules.train import main

    argv = [str(config), "--data", str(data), "--out", str(out)]
    for s in sets:
        argv += ["--set", s] if "=" in s and not s.startswith("--") else [s]
    return main(argv)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {"MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "DATA_OPTIMIZER_CACHE_FOLDER": str(REPO / ".cache" / "litdata")}
    )
    env.update(extra)
    return env


# -- config --------------------------------------------------------------------------------------


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.lrr"):
        load_config(bad)
    bad.write_text("data:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.batch_size"):
        load_config(bad)
    bad.write_text("trainer:\n  precision: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*trainer\.precision"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"--set.*trainer\.epochs"):
        load_config(SMOKE, ["trainer.epochs=3"])
    with pytest.raises(ConfigError, match=r"optim\.lr.*> 0"):
        load_config(SMOKE, ["optim.lr=0"])
    cfg = load_config(SMOKE, ["optim.lr=1e-3", "trainer.limit_train_batches=4", "tracking.tags={a: b}"])
    assert cfg.optim.lr == 1e-3 and cfg.trainer.limit_train_batches == 4 and cfg.tracking.tags == {"a": "b"}


def test_shipped_training_configs_load() -> None:
    from lightning_modules.training.preflight import check_names

    for name in ("smoke-classify", "resnet18", "vgg16", "darknet19", "pretrain-cpu", "transfer-cpu"):
        path = REPO / "configs" / f"{name}.yaml"
        check_names(load_config(path), str(path))


def test_unknown_registry_names_are_config_errors(tmp_path: Path, capsys) -> None:
    for bad in ("model.name=resnet9", "model.activation=swishy", "loss.name=focal9"):
        assert _train(SMOKE, tmp_path / "nowhere", tmp_path / "run", bad) == 2
        err = capsys.readouterr().err
        assert "smoke-classify.yaml" in err and bad.split("=")[0] in err


def test_missing_data_is_a_data_error_naming_the_path(tmp_path: Path, capsys) -> None:
    rc = _train(SMOKE, tmp_path / "nowhere", tmp_path / "run")
    assert rc == 2
    assert str(tmp_path / "nowhere" / "manifest.json") in capsys.readouterr().err


# -- every backbone x activation, every loss, precisions -------------------------------------------


def _fast_dev_run(data: Path, out: Path, *sets: str) -> dict:
    from lightning_modules.train import build_parser, run

    argv = [str(SMOKE), "--data", str(data), "--out", str(out), *FAST]
    for s in sets:
        argv += ["--set", s]
    result = run(build_parser().parse_args(argv))
    assert result["status"] == "fast_dev_run", result
    assert result["metrics"]["train/loss"] == result["metrics"]["train/loss"]  # not NaN
    return result


def _backbone_cases():
    from lightning_modules.models import MODEL_REGISTRY

    for name in MODEL_REGISTRY:
        for act in ("relu", "tanh", "binary_step"):
            yield name, act


@pytest.mark.parametrize(("name", "activation"), list(_backbone_cases()))
def test_fast_dev_run_every_backbone_and_activation(
    tiny_prepared_imagenet: Path, tmp_path: Path, name: str, activation: str
) -> None:
    width = 0.125 if name.startswith(("vgg", "darknet53", "yolo")) else 0.25
    _fast_dev_run(
        tiny_prepared_imagenet,
        tmp_path / "run",
        f"model.name={name}",
        f"model.activation={activation}",
        f"model.width={width}",
        "model.small_input=true",
    )


def test_every_loss_trains_through_the_module(tiny_prepared_imagenet: Path, tmp_path: Path) -> None:
    from lightning_modules.classification.losses import LOSS_REGISTRY

    for loss in LOSS_REGISTRY:
        _fast_dev_run(tiny_prepared_imagenet, tmp_path / loss, f"loss.name={loss}", "loss.label_smoothing=0.0")


@pytest.mark.parametrize(
    "sets",
    [
        ("trainer.precision=bf16-mixed", "trainer.channels_last=true", "data.augment_on=device"),
        ("trainer.precision=16-mixed", "data.color_jitter=0.3"),
        ("optim.name=sgd", "optim.schedule=step", "optim.step_size=1", "optim.reference_batch=8"),
        ("optim.schedule=cosine", "optim.warmup_epochs=1", "trainer.accumulate_grad_batches=2"),
    ],
)
def test_precisions_channels_last_and_schedules(tiny_prepared_imagenet: Path, tmp_path: Path, sets) -> None:
    result = _fast_dev_run(tiny_prepared_imagenet, tmp_path / "run", *sets)
    if "optim.reference_batch=8" in sets:
        assert result  # lr scaling is checked in test_distributed


def test_weight_decay_skips_norms_and_biases() -> None:
    from torch import nn

    from lightning_modules.classification.module import param_groups

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(__import__("torch").zeros(1, 3, 5, 5))
    decay, no_decay = param_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 2  # conv and linear weights
    assert len(no_decay["params"]) == 4  # conv bias, bn weight+bias, linear bias


# -- a real (tiny) training run, tracked -----------------------------------------------------------


def test_training_run_tracks_in_mlflow_and_is_never_overwritten(
    tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str, capsys, caplog
) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    sets = [
        "data.num_workers=0",
        "trainer.max_epochs=3",
        f"tracking.tracking_uri={mlflow_uri}",
        "tracking.experiment=test-job",
        "trainer.grad_monitor_every_n_steps=2",
    ]
    with caplog.at_level(logging.INFO, logger="visionflow"):
        assert _train(SMOKE, tiny_prepared_imagenet, out, *sets) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["global_step"] == 3 * (64 // 32)
    # the reported figure is the last validation's, as recorded epoch by epoch (learning: test_learning.py)
    assert result["metrics"]["val/acc1"] == pytest.approx(result["history"][-1]["val_acc1"])
    run = MlflowClient(mlflow_uri).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert {"train/loss", "val/loss", "val/acc1", "val/acc5", "train/acc1", "effective_batch"} <= set(run.data.metrics)
    # Gradient norms: three charts in their own section under train/, not one per layer ahead of val/.
    grads = {k for k in run.data.metrics if "grad_norm" in k}
    assert grads == {f"train/grad_norm/{k}" for k in ("first_layer", "last_layer", "first_over_last")}
    # The share of step time spent waiting for the next batch, per epoch (issue 16), logged and tracked.
    waits = MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "perf/data_wait_share")
    assert len(waits) == 3 and all(0 < w.value < 1 for w in waits)
    assert sum("of the step time waited for data" in r.getMessage() for r in caplog.records) == 3, caplog.text
    assert run.data.params["effective_batch"] == "32" and run.data.params["optim.lr"] == "0.003"
    # Params of this task only: the classifier's run compares on loss.*, never on unused detection.* settings.
    assert "loss.name" in run.data.params and not any(k.startswith("detection.") for k in run.data.params)
    experiment = MlflowClient(mlflow_uri).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training view
    assert run.data.tags["git_sha"] and run.data.tags["data_version"]
    artifacts = {
        a.path
        for d in (None, "checkpoints", "config")
        for a in MlflowClient(mlflow_uri).list_artifacts(run.info.run_id, d)
    }
    assert {
        "confusion_matrix.png",  # figures at the root: MLflow's Compare view lists root files only
        "learning_curves.png",
        "gradient_flow.png",
        "checkpoints/best.ckpt",
        "config/job.yaml",
    } <= artifacts
    assert len(MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "val/loss")) == 3

    # A finished run is not trained again: the rerun reports the stored result.
    capsys.readouterr()
    mtime = (out / "checkpoints" / "last.ckpt").stat().st_mtime
    assert _train(SMOKE, tiny_prepared_imagenet, out, *sets) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mlflow_run_id"] == result["mlflow_run_id"]
    assert (out / "checkpoints" / "last.ckpt").stat().st_mtime == mtime
    # ... and a different config into the same folder is refused, naming the field.
    assert _train(SMOKE, tiny_prepared_imagenet, out, *sets, "optim.lr=0.1") == 2
    assert "optim.lr" in capsys.readouterr().err


def test_nan_guard_stops_with_a_clear_message(
    tiny_prepared_imagenet: Path, tmp_path: Path, capsys, mlflow_uri: str
) -> None:
    rc = _train(
        SMOKE,
        tiny_prepared_imagenet,
        tmp_path / "run",
        "data.num_workers=0",
        "optim.lr=1e30",
        "optim.name=sgd",
        "optim.schedule=constant",
        "optim.warmup_epochs=0",
        "trainer.grad_monitor_every_n_steps=0",
        f"tracking.tracking_uri={mlflow_uri}",
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "training diverged at global step" in err and ("gradient norm" in err or "train/loss" in err)


def test_tune_writes_an_overlay_config(tiny_prepared_imagenet: Path, tmp_path: Path) -> None:
    from lightning_modules.training.tune import tune

    cfg = load_config(SMOKE, ["data.num_workers=0", "data.batch_size=4"])
    tuned = tune(cfg, tiny_prepared_imagenet, tmp_path / "run", max_batch_trials=2, lr_steps=12)
    path = tmp_path / "run" / "tuned.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["data"]["batch_size"] == tuned["batch_size"] >= 4
    assert doc["optim"]["lr"] > 0 and doc["optim"]["reference_batch"] == tuned["batch_size"]
    # The pick is read from the raw loss of every step of the sweep (not Lightning's biased smoothing).
    sweep = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    assert len(sweep["loss"]) == len(sweep["lr"]) == 12
    assert doc["optim"]["lr"] == pytest.approx(sweep["lr_min_loss"] / 10)
    assert (tmp_path / "run" / "figures" / "lr_find.png").is_file()
    overlaid = load_config([SMOKE, path])
    assert overlaid.data.batch_size == tuned["batch_size"]
    # `train --tune` reuses RUN_DIR/tuned.yaml; its values win over --set and are stored in config.yaml.
    assert (
        _train(
            SMOKE,
            tiny_prepared_imagenet,
            tmp_path / "run",
            "data.num_workers=0",
            "data.batch_size=4",
            "trainer.fast_dev_run=true",
            "--tune",
        )
        == 0
    )


# -- kill mid-epoch, rerun, resume ----------------------------------------------------------------


@pytest.mark.slow  # SIGKILLs a training process
def test_sigkill_mid_epoch_then_rerun_resumes_into_the_same_mlflow_run(
    tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    epochs, batch = 3, 8
    steps = 64 // batch
    cmd = [
        sys.executable,
        "-m",
        "lightning_modules.train",
        str(SMOKE),
        "--data",
        str(tiny_prepared_imagenet),
        "--out",
        str(out),
        "--set",
        f"data.batch_size={batch}",
        "--set",
        "data.num_workers=1",
        "--set",
        f"trainer.max_epochs={epochs}",
        "--set",
        "trainer.checkpoint_every_n_steps=3",
        "--set",
        f"tracking.tracking_uri={mlflow_uri}",
        "--set",
        "tracking.experiment=test-resume",
        "--set",
        "model.width=0.5",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    # Kill once a mid-epoch checkpoint exists in epoch 1 (step 9 = 3 steps into the second epoch).
    while time.monotonic() < deadline and proc.poll() is None:
        if last.is_file():
            import torch

            try:
                step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            except Exception:  # noqa: BLE001 - being written
                step = 0
            if step >= steps + 1:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < killed_at < epochs * steps
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert not (out / "result.json").exists()

    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["mlflow_run_id"] == run_id
    assert result["global_step"] == epochs * steps
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("test-resume")
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    # One val/loss per epoch (an epoch validated before the kill is not validated again).
    val_steps = sorted({m.step for m in client.get_metric_history(run_id, "val/loss")})
    assert len(val_steps) == epochs and val_steps[-1] == epochs * steps - 1
    # The per-epoch history survives the kill: one complete row per epoch.
    assert [r["epoch"] for r in result["history"]] == list(range(1, epochs + 1))
    assert all(r[k] is not None for r in result["history"] for k in ("val_loss", "val_acc1", "lr"))
    print(f"killed at global step {killed_at} (mid-epoch: {killed_at % steps != 0})")


@pytest.mark.slow  # trains until a 5-second budget is spent
def test_max_time_stops_the_run_and_fits_the_schedule_to_it(
    tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    """With trainer.max_time the run ends when the budget is spent (not at max_epochs), and the cosine
    schedule, first planned over max_epochs, is re-planned to the steps that fit: it ends near its floor."""
    out = tmp_path / "run"
    sets = [
        "data.num_workers=0",
        "trainer.max_epochs=100000",  # never reached: the time budget ends the run
        "trainer.max_time=00:00:00:05",
        "optim.schedule=cosine",
        "optim.warmup_epochs=0",
        "optim.min_lr_ratio=0.1",
        "trainer.grad_monitor_every_n_steps=0",
        f"tracking.tracking_uri={mlflow_uri}",
    ]
    assert _train(SMOKE, tiny_prepared_imagenet, out, *sets) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and 2 <= result["epochs"] < 100000
    lrs = [row["lr"] for row in result["history"]]
    # Planned over 100,000 epochs the LR would still be at its peak (0.003); re-planned, it anneals to
    # within reach of the floor (0.0003) by the time the budget runs out.
    assert lrs[0] > 0.002 and lrs[-1] < 0.5 * 0.003, lrs


def test_max_time_is_checked_with_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.max_time"):
        load_config(SMOKE, ["trainer.max_time=4 minutes"])
    with pytest.raises(ConfigError, match="onecycle"):
        load_config(SMOKE, ["trainer.max_time=00:00:04:00"])  # the smoke config's schedule is onecycle
    assert load_config(SMOKE, ["trainer.max_time=00:00:04:00", "optim.schedule=cosine"]).trainer.max_time
