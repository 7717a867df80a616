"""The `make run` console: it follows a real Dagster run from the instance's event log, prints one line per
step start/end and per training epoch, keeps the key numbers, checks and registry decision for the summary
table, and writes every event to the log file."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest

from pipelines.console import RunConsole, summary
from pipelines.main import QUIET_LOGGERS


@dg.asset(check_specs=[dg.AssetCheckSpec("accuracy_floor", asset="classification_evaluation")])
def classification_evaluation(context):  # (a string annotation would not be recognised by Dagster)
    for epoch in (1, 2):
        context.log.info(f"epoch {epoch}: val_acc1 {0.4 + 0.1 * epoch:.4g}")
    context.log.info("a message the console does not repeat")
    yield dg.MaterializeResult(
        metadata={
            "test_acc1": 0.61,
            "test_acc5": 1.0,
            "images": 100,
            "per_class_accuracy": "{...}",  # not a key number: stays out of the table
            "registered_version": "3",
            "promoted": True,
            "promotion": "no champion yet",
            "mlflow_run": "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning",
        },
        check_results=[dg.AssetCheckResult(check_name="accuracy_floor", passed=True)],
    )


@dg.asset(deps=[classification_evaluation])
def broken() -> None:
    raise dg.Failure(description="the data has no test split")


def test_the_console_follows_a_run_and_keeps_what_the_summary_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    defs = dg.Definitions(
        assets=[classification_evaluation, broken], jobs=[dg.define_asset_job("j", selection=dg.AssetSelection.all())]
    )
    log_file = tmp_path / "console" / "run.log"
    with dg.DagsterInstance.ephemeral() as instance:
        console = RunConsole(instance, log_file)
        run_id = str(uuid.uuid4())
        with console.follow(run_id):
            result = defs.resolve_job_def("j").execute_in_process(
                instance=instance, run_id=run_id, run_config=QUIET_LOGGERS, raise_on_error=False
            )
    assert not result.success
    out = capsys.readouterr().out.splitlines()
    expected = [  # in this order, each line starting so
        "  > classification_evaluation started",
        "    classification_evaluation: epoch 1: val_acc1 0.5",
        "    classification_evaluation: epoch 2: val_acc1 0.6",
        "  ok classification_evaluation (",
        "  > broken started",
        "  FAILED broken (",
    ]
    assert [next(line for line in out if line.startswith(e)) for e in expected] == [
        line for line in out if any(line.startswith(e) for e in expected)
    ]
    assert len(out) == len(expected), out  # nothing else: Dagster's own logger is silent
    assert "the data has no test split" in out[-1]
    assert not any("a message the console does not repeat" in line for line in out)
    row = console.rows["classification_evaluation"]
    assert row.ok and row.numbers == {"test_acc1": 0.61, "test_acc5": 1.0, "images": 100}
    assert row.checks == {"accuracy_floor": True}
    assert row.registry == "visionflow-classifier v3: promoted to champion (no champion yet)"
    assert row.where.endswith("workflowType=machine_learning") and row.seconds is not None
    assert console.rows["broken"].ok is False
    logged = log_file.read_text()  # every event, including what the terminal leaves out
    assert "a message the console does not repeat" in logged
    assert any(
        line.split()[1] == "STEP_FAILURE" and "the data has no test split" in line for line in logged.splitlines()
    )

    summary(list(console.rows.values()), "visionflow run: FAILED")
    table = capsys.readouterr().out
    assert "test_acc1 0.610, test_acc5 1.000, images 100" in table and "accuracy_floor ok" in table
    assert "broken (FAILED)" in table and "registry: visionflow-classifier v3: promoted to champion" in table
