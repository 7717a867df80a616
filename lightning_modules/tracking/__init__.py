"""MLflow tracking for training jobs: the store, the run (resumable), and what every run records.

Only global rank 0 talks to MLflow. The run id is kept in RUN_DIR/mlflow_run_id, so rerunning
an interrupted job logs into the same MLflow run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from lightning_modules.errors import ConfigError, StoreLockedError
from lightning_modules.paths import project_root
from lightning_modules.reporting.class_labels import LEGEND_ROWS, add_legend, axis_labels

log = logging.getLogger("visionflow")

RUN_ID_FILE = "mlflow_run_id"
# Where experiments keep their artifacts (a folder or any MLflow artifact URI); unset: beside a SQLite store,
# <project root>/mlartifacts for another database (PostgreSQL), the server's choice for an http:// store.
ARTIFACTS_ENV = "VISIONFLOW_MLFLOW_ARTIFACTS"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db (MLflow 3 refuses the file store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    return uri or default_tracking_uri()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


# MLflow 3's UI opens on its GenAI workspace (traces, judges) unless told otherwise: our experiments are
# model training, recorded as the experiment's kind, and every link we print opens the training view.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "workflowType=machine_learning"


def run_url(uri: str, run_id: str, ui: str) -> str:
    """The MLflow UI page of a run (the UI serves the store at `uri`)."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    experiment = MlflowClient(uri).get_run(run_id).info.experiment_id
    return f"{ui}/#/experiments/{experiment}/runs/{run_id}?{UI_VIEW}"


def ensure_store(uri: str) -> None:
    """Create the tracking store's schema once, under a file lock.

    Several processes opening a fresh SQLite store race on the schema migration and fail;
    call this before ranks start (and it is safe to call from every rank: the lock serialises).
    """
    path = _sqlite_path(uri)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=300):
        from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

        with clear_lock_errors(uri):
            MlflowClient(uri).search_experiments(max_results=1)


@contextlib.contextmanager
def clear_lock_errors(uri: str) -> Iterator[None]:
    """A SQLite store that stays locked (another process writing: runs launched at the same time) raises
    StoreLockedError, which says to use PostgreSQL, instead of SQLAlchemy's "database is locked" traceback."""
    try:
        yield
    except Exception as exc:
        if _sqlite_path(uri) is not None and is_lock_error(exc):
            raise StoreLockedError(uri) from None
        raise


def is_lock_error(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) is SQLite's "database is locked"."""
    seen = 0
    while exc is not None and seen < 20:
        if "database is locked" in str(exc) or "database table is locked" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def git_sha(root: Path | None = None) -> str:
    root = root or project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def open_run(
    uri: str, experiment: str, run_dir: Path, run_name: str | None, tags: dict[str, str], run_id: str | None = None
) -> tuple[str, bool]:
    """The MLflow run of RUN_DIR: (run_id, created).

    In order: the run in RUN_DIR/mlflow_run_id (a rerun or retry resumes into it); else `run_id`, an
    existing run handed over (e.g. created by Dagster's MlflowResource with its tags); else a new run in
    `experiment`. The id ends up in RUN_DIR/mlflow_run_id either way.
    """
    with clear_lock_errors(uri):
        return _open_run(uri, experiment, run_dir, run_name, tags, run_id)


def _open_run(
    uri: str, experiment: str, run_dir: Path, run_name: str | None, tags: dict[str, str], run_id: str | None
) -> tuple[str, bool]:
    from mlflow.exceptions import MlflowException  # lazy: mlflow is ~1 s to import; Dagster loads this module
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    client = MlflowClient(uri)
    id_file = run_dir / RUN_ID_FILE
    if id_file.is_file():
        stored = id_file.read_text().strip()
        try:
            client.get_run(stored)
            client.update_run(stored, status="RUNNING")
            if run_id and run_id != stored:
                log.warning(
                    "tracking.run_id=%s ignored: %s holds run %s, which this job resumes into", run_id, id_file, stored
                )
            return stored, False
        except MlflowException:
            log.warning("MLflow run %s (from %s) is not in %s: starting a new run", stored, id_file, uri)
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"tracking.run_id={run_id}: no such MLflow run in {uri}") from None
        client.update_run(run_id, status="RUNNING")
        _write_id(id_file, run_id)
        return run_id, False
    exp = client.get_experiment_by_name(experiment)
    if exp is not None and exp.lifecycle_stage != "deleted":
        exp_id = exp.experiment_id
        for key, value in EXPERIMENT_TAGS.items():  # experiments made before the kind was recorded
            if key not in exp.tags:
                client.set_experiment_tag(exp_id, key, value)
    else:
        try:
            exp_id = client.create_experiment(
                experiment, artifact_location=_artifact_location(uri, experiment), tags=EXPERIMENT_TAGS
            )
        except MlflowException:  # two runs launched at once: the other one created it first
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME  # lazy: mlflow is ~1 s to import; Dagster loads this module

    all_tags = {**tags, **({MLFLOW_RUN_NAME: run_name} if run_name else {})}
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
    _write_id(id_file, run.info.run_id)
    return run.info.run_id, True


def _write_id(id_file: Path, run_id: str) -> None:
    id_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = id_file.with_suffix(".tmp")
    tmp.write_text(run_id)
    tmp.replace(id_file)


def run_info_logged(uri: str, run_id: str) -> bool:
    """Whether this job already logged its params into the run (MLflow params are write-once)."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    return "effective_batch" in MlflowClient(uri).get_run(run_id).data.params


def experiment_name(uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    client = MlflowClient(uri)
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def _artifact_location(uri: str, experiment: str) -> str | None:
    """$VISIONFLOW_MLFLOW_ARTIFACTS/<experiment>, else beside a SQLite store, else <project root>/mlartifacts for
    another database (MLflow's default is ./mlartifacts under whichever directory the process runs in)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    chosen = os.environ.get(ARTIFACTS_ENV)
    if chosen:
        base = chosen if "://" in chosen else Path(chosen).resolve().as_uri()
        return f"{base.rstrip('/')}/{slug}"
    db = _sqlite_path(uri)
    if db is not None:
        return (db.resolve().parent / "mlartifacts" / slug).as_uri()
    if uri.split(":", 1)[0].split("+")[0] in ("postgresql", "mysql", "mssql"):
        return (project_root() / "mlartifacts" / slug).as_uri()
    return None


def make_logger(uri: str, experiment: str, run_id: str):
    from pytorch_lightning.loggers import MLFlowLogger  # lazy: Lightning; only a training job builds a logger

    # tracking_uri explicitly: MLFlowLogger's own default is the refused file store.
    return MLFlowLogger(experiment_name=experiment, tracking_uri=uri, run_id=run_id)


def log_run_info(
    uri: str, run_id: str, *, params: dict[str, Any], tags: dict[str, str], config_yaml: str | None
) -> None:
    """Params (MLflow keeps them immutable: call once per run), tags and the config file."""
    from mlflow.entities import Param, RunTag  # lazy: mlflow is ~1 s to import; Dagster loads this module
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    client = MlflowClient(uri)
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    if config_yaml is not None:
        client.log_text(run_id, config_yaml, "config/job.yaml")


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    client = MlflowClient(uri)
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v), step=step)


def log_params(uri: str, run_id: str, params: dict[str, object]) -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    client = MlflowClient(uri)
    for k, v in params.items():
        client.log_param(run_id, k, str(v))


def log_figure(uri: str, run_id: str, path: Path) -> None:
    """A figure at the run's artifact root: MLflow's Compare view shows only root-level files, side by side
    for the runs compared (a learning curve under figures/ never appeared there)."""
    log_artifact(uri, run_id, path)


def log_artifact(uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    MlflowClient(uri).log_artifact(run_id, str(path), artifact_path)


def learning_curves(uri: str, run_id: str, out: Path) -> Path | None:
    """Plot train/val loss and accuracy per epoch from the run's metric history (all attempts of the run)."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    client = MlflowClient(uri)
    epoch_at = {m.step: m.value for m in client.get_metric_history(run_id, "epoch")}
    panels = [("loss", ["train/loss", "val/loss"]), ("top-1 / top-5 accuracy", ["train/acc1", "val/acc1", "val/acc5"])]
    if client.get_metric_history(run_id, "val/map_50"):  # a detector: mAP instead of accuracy
        panels[1] = ("COCO mAP (val)", ["val/map_50", "val/map"])
    series: dict[str, list[tuple[float, float]]] = {}
    for _, keys in panels:
        for key in keys:
            hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            series[key] = [(epoch_at.get(m.step, m.step) + 1, m.value) for m in hist]
    if not any(series.values()):
        return None
    import matplotlib  # lazy: matplotlib loads at draw time, Agg chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            if series[key]:
                xs, ys = zip(*series[key])
                ax.plot(xs, ys, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def confusion_figure(matrix, class_names: list[str], out: Path, split: str = "val") -> Path:
    """Row-normalised confusion matrix (rows: true class) as a PNG."""
    import matplotlib  # lazy: matplotlib loads at draw time, Agg chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")
    import numpy as np  # lazy: drawing only; the train and search CLIs load this module

    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(m)
    size = min(20, max(4, k * 0.4))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    legend = None
    if k <= LEGEND_ROWS:
        names, legend = axis_labels(class_names) if len(class_names) == k else ([str(i) for i in range(k)], None)
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        str(int(m[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({split}, accuracy {np.trace(m) / max(m.sum(), 1):.3f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    add_legend(fig, legend)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def set_tag(uri: str, run_id: str, key: str, value: str) -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    MlflowClient(uri).set_tag(run_id, key, value[:5000])
