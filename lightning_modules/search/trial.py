"""One trial: its nested MLflow run, its training job (through the search's `Launch`), and telling the
study how it ended (COMPLETE, PRUNED or FAIL). Runs in a trial thread; study and MLflow calls go
under the search's lock.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_modules.search import pruning
from lightning_modules.search.config import METRICS, SearchConfig
from lightning_modules.search.overrides import overrides
from lightning_modules.search.results import read_history, short
from lightning_modules.search.study import STUDY_NAME, Context
from lightning_modules.tracking.experiments import JobFailed, JobRequest, child_run, finish_run

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("visionflow")

TRIALS_DIR = "trials"


# The only private Optuna use in the search, kept to these two helpers (checked against optuna 5.1):
# - The job is another process; it reports to its trial by storage id (pruning.trial_env). Neither
#   Trial nor FrozenTrial has a public accessor for that id (only `_trial_id`); mapping the number to
#   the id needs the storage (BaseStorage: "not supposed to be directly accessed by library users")
#   and the private `study._study_id`.
# - A rerun resumes the trials a killed search left RUNNING (same number, run folder, checkpoint and
#   MLflow run) and sets their user attributes. No public call returns a live Trial for an existing
#   trial: `study.ask()` only creates one (or pops a WAITING one), `enqueue_trial` would make a new
#   number and leave the old trial RUNNING, and FrozenTrial.set_user_attr changes only the copy. So it
#   is `Trial(study, id)`, the constructor `study.ask()` itself calls (public, documented as "not
#   recommended" for direct use). New trials use the Trial `study.ask()` returns; every trial is
#   ended with `study.tell(number)`.
def trial_id(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> int:
    """The trial's id in the study's storage (what the job's pruning callback reports to)."""
    return trial._trial_id


def reopen_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A live handle on a trial left RUNNING, to set its user attributes (the sampler's
    `before_trial` is a no-op for it: GridSampler sees its grid_id, RandomSampler does nothing)."""
    import optuna  # heavy (sqlalchemy, alembic): only when a search runs

    return optuna.trial.Trial(study, trial_id(frozen))


def run_trial(ctx: Context, trial: optuna.trial.Trial, params: dict[str, Any]) -> dict[str, Any]:
    """Launch one trial's job and tell the study how it ended (COMPLETE, PRUNED or FAIL)."""
    from optuna.trial import TrialState  # heavy (sqlalchemy, alembic): only when a search runs

    number = trial.number
    req, child_id = _prepare(ctx, trial, params)
    log.info("trial %d: %s", number, ", ".join(f"{k}={short(v)}" for k, v in params.items()))
    error = None
    try:
        result = ctx.launch(req)
        if result.get("status") != "finished":
            raise JobFailed(f"{req.run_dir}: the job ended with status {result.get('status')!r}")
    except JobFailed as exc:
        if ctx.stopping.is_set():
            log.warning("trial %d: interrupted; a rerun with the same --out resumes it", number)
            return {"number": number, "state": "RUNNING", "value": None, "epochs_run": len(read_history(req.run_dir))}
        error = str(exc)
    except BaseException:
        if not ctx.stopping.is_set():
            with ctx.lock:
                _tell(ctx, number, TrialState.FAIL, None)
                finish_run(ctx.uri, child_id, "FAILED")
        raise
    state, value, epochs, pruned, error = _outcome(ctx.cfg, req.run_dir, error)
    with ctx.lock:
        trial.set_user_attr("epochs_run", epochs)
        if pruned:
            trial.set_user_attr("pruned_epoch", pruned.get("epoch"))
        if error:
            trial.set_user_attr("error", error[-2000:])
        _tell(ctx, number, getattr(TrialState, state), value if state == "COMPLETE" else None)
        _tag_child(ctx, child_id, number, state, value, error)
    log.info(
        "trial %d %s after %d epoch(s)%s",
        number,
        state,
        epochs,
        f", {ctx.cfg.metric}={value:.4g}" if value is not None else f": {error}" if error else "",
    )
    return {"number": number, "state": state, "value": value, "epochs_run": epochs}


def _prepare(ctx: Context, trial: optuna.trial.Trial, params: dict[str, Any]) -> tuple[JobRequest, str]:
    """The trial's nested MLflow run (reopened on a resume) and its job: (JobRequest, run id)."""
    cfg, number = ctx.cfg, trial.number
    run_dir = ctx.out / TRIALS_DIR / f"trial_{number}"
    with ctx.lock:
        child_id = child_run(
            ctx.uri,
            cfg.experiment,
            ctx.parent_id,
            run_dir,
            f"trial_{number}",
            tags={"trial_number": str(number), "state": "RUNNING", "search": cfg.name or ""},
        )
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("mlflow_run_id", child_id)
    values = {
        **cfg.fixed,
        **cfg.trial_overrides,
        "trainer.max_epochs": cfg.epochs_per_trial,
        **params,
        "tracking.tracking_uri": ctx.uri,
        "tracking.experiment": cfg.experiment,
        "tracking.run_id": child_id,
    }
    env = {**pruning.trial_env(ctx.storage_url, STUDY_NAME, trial_id(trial)), "VISIONFLOW_THREADS": str(ctx.threads)}
    req = JobRequest(
        configs=tuple(map(str, cfg.base)),
        data=ctx.data,
        run_dir=run_dir,
        overrides=tuple(overrides(values, ctx.base)),
        env=env,
    )
    return req, child_id


def _outcome(cfg: SearchConfig, run_dir: Path, error: str | None):
    """(state name, value, epochs run, pruned.json or None, error) of a trial whose job has ended.

    The value is the best epoch's metric (the job keeps that epoch's checkpoint as best.ckpt).
    """
    history = read_history(run_dir)
    column, _ = METRICS[cfg.metric]
    scores = [r[column] for r in history if isinstance(r.get(column), (int, float)) and math.isfinite(r[column])]
    value = (min if cfg.direction == "minimize" else max)(scores) if scores else None
    pruned = pruning.read_pruned(run_dir)
    if error is None and value is None and pruned is None:
        error = f"{run_dir}: the job logged no {cfg.metric} (history.json column {column})"
    state = "FAIL" if error else "PRUNED" if pruned else "COMPLETE"
    return state, value, len(history), pruned, error


def _tell(ctx: Context, number: int, state: Any, value: float | None) -> None:
    try:
        ctx.study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as exc:
        # GridSampler calls study.stop() once the grid is done, which only works inside
        # study.optimize(); the trial's state is stored before that (optuna issue #4121).
        if "Study.stop" not in str(exc):
            raise


def _tag_child(ctx: Context, run_id: str, number: int, state: str, value: float | None, error: str | None) -> None:
    from mlflow.tracking import MlflowClient  # heavy: only when a search runs

    client = MlflowClient(ctx.uri)
    client.set_tag(run_id, "state", state)
    client.set_tag(run_id, "trial_number", str(number))
    if value is not None:
        # One sortable column per trial in the MLflow UI: the value the search ranks trials by.
        client.log_metric(run_id, "search/value", float(value))
    if error:
        client.set_tag(run_id, "error", error[-5000:])
        client.set_terminated(run_id, status="FAILED")
