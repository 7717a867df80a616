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
        context.log.info(f"epoch {epoch}: val_loss 1.2, val_acc1 {0.4 + 0.1 * epoch:.4g}")
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


@dg.asset
def trained(context) -> None:
    for epoch in range(1, 13):
        context.log.info(f"epoch {epoch}/12: val_loss 1.5, val_acc1 {epoch / 100:.2f}")
        context.log.info(f"epoch {epoch}: 12.5% of the step time waited for data")  # not an epoch summary


@dg.asset
def dropout_study(context) -> None:
    for job in range(1, 10):
        context.log.info("epoch 1/2: train_loss 2.0")  # a study's own jobs: the count stands for them
        context.log.info(f"study dropout: {job}/9 (1/s)")


def _follow(defs: dg.Definitions, tmp_path: Path, **console_args) -> RunConsole:
    with dg.DagsterInstance.ephemeral() as instance:
        console = RunConsole(instance, tmp_path / "run.log", **console_args)
        run_id = str(uuid.uuid4())
        with console.follow(run_id):
            defs.resolve_job_def("j").execute_in_process(instance=instance, run_id=run_id, run_config=QUIET_LOGGERS)
    return console


def test_without_a_terminal_a_long_training_shows_a_few_epochs_and_its_last(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    defs = dg.Definitions(assets=[trained], jobs=[dg.define_asset_job("j", selection=dg.AssetSelection.all())])
    _follow(defs, tmp_path, live=False)
    shown = [line.split(": ")[1] for line in capsys.readouterr().out.splitlines() if "epoch " in line]
    assert shown == ["epoch 1/12", "epoch 3/12", "epoch 6/12", "epoch 9/12", "epoch 12/12"]
    assert (tmp_path / "run.log").read_text().count("epoch ") == 24, "the log keeps every line"


def test_a_study_shows_its_job_count_not_its_jobs_epochs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    defs = dg.Definitions(assets=[dropout_study], jobs=[dg.define_asset_job("j", selection=dg.AssetSelection.all())])
    _follow(defs, tmp_path, live=False)
    out = [line.strip() for line in capsys.readouterr().out.splitlines() if "dropout_study: " in line]
    assert out == [f"dropout_study: study dropout: {k}/9 (1/s)" for k in (1, 3, 6, 9)]


def test_on_a_terminal_epochs_drive_a_progress_bar_that_gives_way_to_the_steps_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    defs = dg.Definitions(assets=[trained], jobs=[dg.define_asset_job("j", selection=dg.AssetSelection.all())])
    console = _follow(defs, tmp_path, live=True)
    assert console.progress is not None
    (bar,) = console.progress.tasks
    assert bar.total == 12 and bar.completed == 12 and not bar.visible, "filled, then gone with the step"
    assert bar.description == "trained: epoch 12/12: val_loss 1.5, val_acc1 0.12"
    out = capsys.readouterr().out
    assert "  ok trained (" in out and "epoch 6/12" not in out.replace("epoch 12/12", "")


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
        "    classification_evaluation: epoch 1: val_loss 1.2, val_acc1 0.5",
        "    classification_evaluation: epoch 2: val_loss 1.2, val_acc1 0.6",
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


@pytest.mark.slow
def test_make_runs_runs_are_launched_like_the_uis_and_carry_their_code_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` queues each run on the instance with `dagster job launch` and a daemon starts it: the run
    records the workspace's code location, which is what the Overview timeline groups runs by (runs
    executed in process have none, so the timeline left them out)."""
    from lightning_modules.paths import project_root
    from pipelines import submit
    from pipelines.main import dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    root = project_root()
    dagster_home(root)
    with dg.DagsterInstance.get() as instance, (tmp_path / "daemon.log").open("w") as log:
        with submit.daemon(root, log):
            run_id = submit.launch(root, "observe_raw_data", run_config=QUIET_LOGGERS, tags={"who": "test"})
            assert submit.wait(instance, run_id) == dg.DagsterRunStatus.SUCCESS
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.tags["who"] == "test"
        origin = run.remote_job_origin
        assert origin is not None and origin.job_name == "observe_raw_data"
        assert origin.repository_origin.code_location_origin.location_name == "visionflow"
        observed = instance.fetch_observations(dg.AssetKey("raw_data"), limit=1).records
        assert observed and observed[0].run_id == run_id
    with submit.daemon_lock().acquire(timeout=0):  # released with the daemon
        pass
    with pytest.raises(RuntimeError, match="could not launch the no_such_job job"):
        submit.launch(root, "no_such_job")
