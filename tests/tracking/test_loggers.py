"""Weights & Biases and Comet beside MLflow (tracking.loggers: [mlflow, wandb] / [mlflow, comet]), for real
and offline: no account, no network. The `wandb` and `comet` extras are installed by `make test` (and so in
CI), so these never skip there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke-classify.yaml"


def test_an_offline_wandb_run_gets_the_params_and_metrics_mlflow_gets(
    tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    env = {"WANDB_API_KEY": "", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    result = _train_with("wandb", tiny_prepared_imagenet, out, mlflow_uri, {**_environ(), **env})
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    run_id = (out / "wandb_run_id").read_text().strip()
    assert runs[0].name.endswith(run_id) and list(runs[0].glob("*.wandb"))
    # An offline run is W&B's transaction log (what `wandb sync` uploads): protobuf records whose history
    # items hold the key (field 2) and the value as JSON (field 16, tag 0x82 0x01).
    log = next(runs[0].glob("*.wandb")).read_bytes()
    values = [float(m.group(2)) for m in re.finditer(rb"\x12\x08val/acc1\x82\x01(.)([0-9.e+-]+)", log)]
    assert len(values) >= 2  # every validation (the sanity check's, then each epoch's)
    assert values[-1] == pytest.approx(result["metrics"]["val/acc1"])  # the same figure as MLflow's
    assert b"optim.lr" in log and b"detection.version" not in log  # the task's params, as in MLflow
    mlflow_run = MlflowClient(mlflow_uri).get_run(result["mlflow_run_id"])
    assert mlflow_run.data.metrics["val/acc1"] == pytest.approx(values[-1])


def _train_with(tracker: str, data: Path, out: Path, mlflow_uri: str, env: dict[str, str]) -> dict:
    """A 2-epoch smoke job logging to MLflow and `tracker`, as a user runs it; its result.json."""
    cmd = [sys.executable, "-m", "lightning_modules.train", str(SMOKE), "--data", str(data), "--out", str(out)]
    for s in (
        "data.num_workers=0",
        "trainer.max_epochs=2",
        f"tracking.tracking_uri={mlflow_uri}",
        f"tracking.experiment=test-{tracker}",
        f"tracking.loggers=[mlflow, {tracker}]",
    ):
        cmd += ["--set", s]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}


def test_an_offline_comet_experiment_gets_the_params_and_metrics_mlflow_gets(
    tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    env = {k: v for k, v in _environ().items() if not k.startswith("COMET_")} | {"MPLBACKEND": "Agg"}
    result = _train_with("comet", tiny_prepared_imagenet, out, mlflow_uri, env)
    # The offline archive (what `comet upload` sends), named after the experiment key the run folder keeps.
    (archive,) = (out / "comet").glob("*.zip")
    assert archive.name.startswith((out / "comet_experiment_key").read_text().strip())
    with zipfile.ZipFile(archive) as z:
        messages = [json.loads(line) for line in z.read("messages.json").decode().splitlines() if line.strip()]
    metrics = [m["payload"]["metric"] for m in messages if m["type"] == "metric_msg"]
    # a scalar parameter comes as "param", a list one as "params"
    params = {
        (m["payload"].get("param") or m["payload"]["params"])["paramName"]
        for m in messages
        if m["type"] == "parameter_msg"
    }
    val_acc1 = [m["metricValue"] for m in metrics if m["metricName"] == "val/acc1"]
    assert len(val_acc1) == 2  # one per epoch
    mlflow_run = MlflowClient(mlflow_uri).get_run(result["mlflow_run_id"])
    assert val_acc1[-1] == pytest.approx(mlflow_run.data.metrics["val/acc1"])  # the same figure as MLflow's
    assert "optim.lr" in params and not any(p.startswith("detection.") for p in params)
