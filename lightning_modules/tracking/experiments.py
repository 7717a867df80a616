"""Many training jobs as one experiment: a parent MLflow run, a nested run per job, a pluggable launcher.

Studies and hyperparameter searches run several jobs of `python -m lightning_modules.train`. Each job
gets its own run folder and an MLflow run nested under the experiment's parent run (tag
`mlflow.parentRunId`), created here and handed to the job through `tracking.run_id`, so the job logs
its params, curves and checkpoint into it. How a job is started is a `Launch` function:
`subprocess_launch` on this machine (the command line), or the Dagster launcher (torchrun + Pipes)
when an asset runs the experiment.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from lightning_modules import tracking
from lightning_modules.contract import JobFailed, JobRequest, JobResult, read_result

__all__ = [
    "PARENT_TAG",
    "JobFailed",
    "JobRequest",
    "JobResult",
    "Launch",
    "read_result",
    "subprocess_launch",
    "parent_run",
    "child_run",
    "finish_run",
]

PARENT_TAG = "mlflow.parentRunId"


# A launcher runs the job to its end and returns its RUN_DIR/result.json.
Launch = Callable[[JobRequest], JobResult]


def subprocess_launch(req: JobRequest, *, timeout: float | None = None) -> JobResult:
    """Run the job as a child process of this Python; JobFailed with the stderr tail when it fails."""
    req.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = req.command()
    log_path = req.run_dir / "job.log"
    with log_path.open("ab") as log:
        done = subprocess.run(cmd, env={**_own_env(), **req.env}, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise JobFailed(f"{req.run_dir}: training job exited with {done.returncode}:\n{tail}")
    return read_result(req.run_dir)


def _own_env() -> dict[str, str]:
    """This process's environment without its Dagster Pipes session: a child job reports to its parent
    through result.json; two writers on one Pipes channel would corrupt the step's report."""
    return {k: v for k, v in os.environ.items() if k != "VISIONFLOW_REPORTER" and not k.startswith("DAGSTER_PIPES_")}


def parent_run(uri: str, experiment: str, run_dir: Path, name: str, tags: dict[str, str] | None = None) -> str:
    """The experiment's parent MLflow run (reopened when RUN_DIR already holds one)."""
    tracking.ensure_store(uri)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id, _ = tracking.open_run(uri, experiment, run_dir, name, dict(tags or {}))
    return run_id


def child_run(
    uri: str, experiment: str, parent_id: str, run_dir: Path, name: str, tags: dict[str, str] | None = None
) -> str:
    """A run nested under `parent_id`, for one job whose folder is RUN_DIR (reopened on a rerun)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id, _ = tracking.open_run(uri, experiment, run_dir, name, {**(tags or {}), PARENT_TAG: parent_id})
    return run_id


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    MlflowClient(uri).set_terminated(run_id, status=status)
