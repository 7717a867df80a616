"""A search's state while it runs (`Context`): its Optuna study in OUT/optuna.db, created or reopened after
checking it is the same search, and its MLflow parent run.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from lightning_modules.config import JobConfig, diff
from lightning_modules.data.lineage import data_identity
from lightning_modules.errors import ConfigError
from lightning_modules.search import pruning
from lightning_modules.search.config import Sampler, SearchConfig
from lightning_modules.search.space import ParamSpec
from lightning_modules.tracking.experiments import Launch, parent_run
from lightning_modules.training.distributed import cpu_count

if TYPE_CHECKING:
    import optuna

STUDY_NAME = "search"  # one study per OUT (OUT/optuna.db)
STUDY_ATTR_SEARCH = "visionflow_search"  # what defines the search; a rerun must match it


def _grid(space: dict[str, list[Any]], seed: int):
    import optuna  # heavy (sqlalchemy, alembic): only when a search runs

    return optuna.samplers.GridSampler(space, seed=seed)


def _random(space: dict[str, list[Any]], seed: int):
    import optuna  # heavy: see _grid

    return optuna.samplers.RandomSampler(seed=seed)


# name (config.Sampler) -> constructor(grid space {param: [values]}, seed).
SAMPLERS = {"grid": _grid, "random": _random}
if set(SAMPLERS) != set(get_args(Sampler)):
    raise RuntimeError("search.study: SAMPLERS must match search.config.Sampler")


@dataclass
class Context:
    """One run of a search: what every trial thread shares. Study and MLflow calls go under `lock`."""

    cfg: SearchConfig
    data: Path
    out: Path
    launch: Launch
    uri: str
    storage_url: str
    study: optuna.Study
    parent_id: str
    base: JobConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: int = 1
    # Set when the search itself is interrupted (Ctrl-C also ends the jobs): their trials stay
    # RUNNING in the study, so a rerun resumes them instead of counting them as failed.
    stopping: threading.Event = field(default_factory=threading.Event)


def open_search(cfg: SearchConfig, data: Path, out: Path, launch: Launch, uri: str, base: JobConfig) -> Context:
    """The study (created, or reopened after checking it is the same search) and the parent run."""
    import optuna  # heavy (sqlalchemy, alembic): only when a search runs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = f"sqlite:///{out / 'optuna.db'}"
    sampler = SAMPLERS[cfg.sampler](cfg.grid_space, cfg.seed)
    study = optuna.create_study(
        storage=pruning.open_storage(storage_url),
        study_name=STUDY_NAME,
        sampler=sampler,
        pruner=pruning.build_pruner(cfg.pruner, cfg.pruner_args),
        direction=cfg.direction,
        load_if_exists=True,
    )
    # as stored (tuples -> lists); the data too: a rerun on re-prepared data is another search, not this one
    identity = json.loads(json.dumps({**cfg.identity(), "data": data_identity(data)}))
    stored = study.user_attrs.get(STUDY_ATTR_SEARCH)
    if stored is None:
        study.set_user_attr(STUDY_ATTR_SEARCH, identity)
        study.set_user_attr(pruning.STUDY_ATTR_PRUNER, {"name": cfg.pruner, "args": cfg.pruner_args})
        study.set_user_attr(pruning.STUDY_ATTR_METRIC, cfg.metric)
    elif stored != identity:
        changed = ", ".join(diff(stored, identity)[:8])
        raise ConfigError(f"{out}: this folder holds a different search ({changed} differ); use a new --out")
    parent_id = parent_run(
        uri,
        cfg.experiment,
        out,
        cfg.name or "search",
        tags={"search": cfg.name or "", "sampler": cfg.sampler, "pruner": cfg.pruner},
    )
    _log_parent_info(uri, parent_id, cfg)
    # Parallel trials (and their DDP ranks) share this machine's cores; VISIONFLOW_THREADS overrides.
    ranks = cfg.parallel * cfg.job_config().trainer.devices
    threads = int(os.environ.get("VISIONFLOW_THREADS") or max(1, cpu_count() // ranks))
    return Context(cfg, data, out, launch, uri, storage_url, study, parent_id, base, threads=threads)


def _log_parent_info(uri: str, run_id: str, cfg: SearchConfig) -> None:
    """Params once (MLflow keeps them immutable); the budget as tags, since a rerun may raise it."""
    from mlflow.entities import Param, RunTag  # heavy: only when a search runs
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; Dagster loads this module

    client = MlflowClient(uri)
    tags = {"n_trials": cfg.trials_wanted(), "parallel": cfg.parallel}
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    if client.get_run(run_id).data.params:
        return
    params = {
        "sampler": cfg.sampler,
        "seed": cfg.seed,
        "pruner": cfg.pruner,
        "pruner_args": json.dumps(cfg.pruner_args),
        "epochs_per_trial": cfg.epochs_per_trial,
        "metric": cfg.metric,
        "direction": cfg.direction,
        "base": cfg.base_names(),
        **{f"space.{k}": _describe(p) for k, p in cfg.space.items()},
    }
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    client.log_text(run_id, cfg.source.read_text(), "search/search.yaml")


def _describe(p: ParamSpec) -> str:
    return json.dumps(p.choices) if p.choices is not None else f"[{p.low}, {p.high}]{' log' if p.log else ''}"
