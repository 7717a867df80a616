"""Compute steps as programs (`python -m lightning_modules.steps NAME SPEC.json`): the same code the
assets launch, run by hand: results in OUT/step_result.json and the MLflow run, errors named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from lightning_modules.steps.specs import TransferReportSettings, TransferReportSpec

REPO = Path(__file__).resolve().parents[2]


def _history(values: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "val_acc1": v} for i, v in enumerate(values)]


def _run(name: str, spec_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_modules.steps", name, str(spec_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_transfer_report_step_reports_to_its_folder_and_mlflow(tmp_path: Path, mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("steps", artifact_location=str(tmp_path / "a"))).info.run_id
    spec = TransferReportSpec(
        out=str(tmp_path / "out"),
        tracking_uri=mlflow_uri,
        run_id=run_id,
        transfer_history=_history([0.4, 0.6, 0.7, 0.72]),
        scratch_history=_history([0.2, 0.25, 0.3, 0.35]),
        settings=TransferReportSettings(early_epochs=2),
    )
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    done = _run("transfer_report", tmp_path / "spec.json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "step_result.json").read_text())["metadata"]
    assert result["gain_start"] == 0.2 and result["gain_asymptote"] == 0.37
    assert (tmp_path / "out" / "transfer_vs_scratch.png").is_file()
    run = client.get_run(run_id)
    assert run.data.metrics["gain_start"] == 0.2 and run.info.status == "FINISHED"


def test_a_failing_step_names_its_error(tmp_path: Path, mlflow_uri: str) -> None:
    spec = {
        "out": str(tmp_path / "out"),
        "tracking_uri": mlflow_uri,
        "run_id": "x",
        "checkpoint": str(tmp_path / "no.ckpt"),
        "data": str(tmp_path),
        "settings": {"model_name": "m"},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = _run("classification_evaluation", tmp_path / "spec.json")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no.ckpt: checkpoint not found" in (tmp_path / "step_error.txt").read_text()


def test_a_malformed_spec_names_the_field(tmp_path: Path) -> None:
    spec = {"out": str(tmp_path / "out"), "tracking_uri": "sqlite:///x.db", "run_id": "r"}
    spec |= {"transfer_history": [], "scratch_history": [], "settings": {"early_epochs": 0}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = _run("transfer_report", tmp_path / "spec.json")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    error = (tmp_path / "step_error.txt").read_text()
    assert "not a valid TransferReportSpec (settings.early_epochs: Input should be greater than or equal to 1)" in error
