"""Hyperparameter search: many short training jobs chosen by Optuna, pruned on early validation loss.

    python -m lightning_modules.search SEARCH_YAML --data PREPARED --out OUT [--tracking-uri URI]

SEARCH_YAML (see configs/search-cpu.yaml) names the base job config(s), the space (dotted job-config
keys such as optim.lr, data.batch_size, optim.momentum, optim.weight_decay, model.dropout.classifier,
each a list of values or a {low, high, log} range), the sampler (grid or random), the pruner
(median, successive_halving or none), the budget (n_trials, epochs_per_trial) and how many trials
run at once (parallel).

Each trial is an ordinary training job (`python -m lightning_modules.train`, started through a
`Launch` function) in OUT/trials/trial_<n>, logging into an MLflow run nested under the search's
parent run; its parameters are plain `--set` overrides, so the job logs them as MLflow params. The
job reports its validation metric to the Optuna study (OUT/optuna.db, see lightning_modules.pruning)
each epoch and stops when the pruner says so.

OUT gets optuna.db (the study: rerunning with the same OUT continues it; finished trials are never
trained again, interrupted ones resume), best.yaml (an overlay config for the pretraining job:
`python -m lightning_modules.train BASE OUT/best.yaml ...`), trials.json and figures/search.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lightning_modules import pruning
from lightning_modules.config import JobConfig, diff, load_config, to_dict
from lightning_modules.errors import ConfigError, VisionflowError
from lightning_modules.experiments import (
    JobFailed,
    JobRequest,
    Launch,
    child_run,
    finish_run,
    parent_run,
    subprocess_launch,
)
from lightning_modules.progress import log_to_stderr

log = logging.getLogger("visionflow")

STUDY_NAME = "search"  # one study per OUT (OUT/optuna.db)
STUDY_ATTR_SEARCH = "visionflow_search"  # what defines the search; a rerun must match it
TRIALS_DIR = "trials"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.json"
FIGURE = "figures/search.png"

# The search metric -> (its column in a job's history.json, default direction).
METRICS = {
    "val/loss": ("val_loss", "minimize"),
    "val/acc1": ("val_acc1", "maximize"),
    "val/acc5": ("val_acc5", "maximize"),
}


def _grid(space: dict[str, list[Any]], seed: int):
    import optuna

    return optuna.samplers.GridSampler(space, seed=seed)


def _random(space: dict[str, list[Any]], seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


# name -> constructor(grid space {param: [values]}, seed).
SAMPLERS = {"grid": _grid, "random": _random}


# -- config ---------------------------------------------------------------------------------------


@dataclass
class ParamSpec:
    """One searched job-config key: a list of `choices`, or a `low`..`high` range (random search only)."""

    key: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_range(self) -> bool:
        return self.choices is None

    def candidates(self) -> list[Any]:
        """Values that must make a valid job config (all choices, or both ends of the range)."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        if _is_int(self.low) and _is_int(self.high) and (self.step is None or _is_int(self.step)):
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


@dataclass
class SearchConfig:
    """A search, as read from SEARCH_YAML. Paths are absolute; `source` is the file, for messages."""

    base: list[Path]
    space: dict[str, ParamSpec]
    sampler: str = "random"
    seed: int = 0
    pruner: str = "median"
    pruner_args: dict[str, Any] | None = None  # None: pruning.PRUNER_DEFAULTS for the pruner
    n_trials: int | None = None  # None: the grid's size (grid) or 10 (random)
    parallel: int = 1
    epochs_per_trial: int = 3
    metric: str = "val/loss"
    direction: str | None = None  # None: METRICS' default for the metric
    experiment: str = "visionflow-search"
    name: str | None = None  # the MLflow parent run's name; None: the file's stem
    # Job settings that are part of the searched configuration (also written to best.yaml) ...
    fixed: dict[str, Any] = field(default_factory=dict)
    # ... and settings for the short trial jobs only (not in best.yaml), e.g. data.num_workers.
    trial_overrides: dict[str, Any] = field(default_factory=dict)
    source: Path = Path("<search config>")

    @property
    def grid_space(self) -> dict[str, list[Any]]:
        return {k: list(p.choices or []) for k, p in self.space.items()}

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.choices or []) for p in self.space.values())

    def trials_wanted(self) -> int:
        if self.sampler == "grid":
            return min(self.n_trials or self.grid_size, self.grid_size)
        return self.n_trials or 10

    def base_names(self) -> str:
        return ", ".join(str(p) for p in self.base)

    def identity(self) -> dict[str, Any]:
        """What makes two searches the same (n_trials and parallel may change on a rerun)."""
        return {
            "job": _without_tracking(to_dict(self.job_config())),
            "space": {k: dataclasses.asdict(p) for k, p in sorted(self.space.items())},
            "sampler": self.sampler,
            "seed": self.seed,
            "pruner": self.pruner,
            "pruner_args": self.pruner_args,
            "epochs_per_trial": self.epochs_per_trial,
            "metric": self.metric,
            "direction": self.direction,
            "experiment": self.experiment,
        }

    def job_config(self, params: dict[str, Any] | None = None) -> JobConfig:
        """The job config of a trial with `params` (the base with the fixed and trial settings)."""
        base = load_config(self.base)
        values = {**self.fixed, **self.trial_overrides, "trainer.max_epochs": self.epochs_per_trial, **(params or {})}
        return load_config(self.base, overrides(values, base))


_KEYS = {f.name for f in dataclasses.fields(SearchConfig)} - {"source"}
_RANGE_KEYS = {"low", "high", "log", "step"}


def load_search_config(path: str | Path) -> SearchConfig:
    """Read and check SEARCH_YAML; every problem is a ConfigError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: search config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping (base, space, sampler, ...)")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
    for key in ("base", "space"):
        if not raw.get(key):
            raise ConfigError(f"{path}: '{key}' is required")
    kwargs = {k: v for k, v in raw.items() if k not in ("base", "space")}
    _check_types(kwargs, path)
    base = raw["base"] if isinstance(raw["base"], list) else [raw["base"]]
    if not isinstance(raw["space"], dict):
        raise ConfigError(f"{path}: 'space' must map job-config keys (e.g. optim.lr) to a list or {{low, high}}")
    cfg = SearchConfig(
        base=[_find_base(b, path) for b in base],
        space={str(k): _param(str(k), v, path) for k, v in raw["space"].items()},
        source=path.resolve(),
        **kwargs,
    )
    cfg.name = cfg.name or path.stem
    if cfg.pruner_args is None:
        cfg.pruner_args = dict(pruning.PRUNER_DEFAULTS.get(cfg.pruner, {}))
    cfg.direction = cfg.direction or METRICS.get(cfg.metric, (None, "minimize"))[1]
    _validate(cfg)
    return cfg


_INT_KEYS = ("seed", "n_trials", "parallel", "epochs_per_trial")
_STR_KEYS = ("sampler", "pruner", "metric", "direction", "experiment", "name")
_DICT_KEYS = ("pruner_args", "fixed", "trial_overrides")


def _check_types(kw: dict[str, Any], path: Path) -> None:
    """In place: empty sections become {}; wrong types are ConfigErrors naming the key."""
    for key, value in kw.items():
        if value is None:
            if key in ("fixed", "trial_overrides"):
                kw[key] = {}
            continue
        if key in _INT_KEYS and not _is_int(value):
            raise ConfigError(f"{path}: {key}={value!r} must be an integer")
        if key in _STR_KEYS and not isinstance(value, str):
            raise ConfigError(f"{path}: {key}={value!r} must be a string")
        if key in _DICT_KEYS and not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a mapping (e.g. {{optim.name: sgd}})")
    for key in ("n_trials", "parallel", "epochs_per_trial"):
        if kw.get(key) is not None and kw[key] < 1:
            raise ConfigError(f"{path}: {key}={kw[key]} must be >= 1")


def _find_base(name: Any, path: Path) -> Path:
    """A base job config: relative to the search file's folder, else to the project root."""
    from lightning_modules.paths import project_root

    p = Path(str(name))
    for candidate in [p] if p.is_absolute() else [path.parent / p, project_root() / p]:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{path}: base: job config {name} not found (next to this file or in {project_root()})")


def _param(key: str, value: Any, path: Path) -> ParamSpec:
    where = f"{path}: space.{key}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: the list of values is empty")
        choices = [_number(v) for v in value]
        bad = [v for v in choices if not (v is None or isinstance(v, (bool, int, float, str)))]
        if bad:
            raise ConfigError(f"{where}: values must be numbers, strings, booleans or null, not {bad[0]!r}")
        return ParamSpec(key, choices=choices)
    if isinstance(value, dict):
        extra = sorted(set(value) - _RANGE_KEYS)
        if extra or "low" not in value or "high" not in value:
            raise ConfigError(
                f"{where}: a range is {{low, high[, log][, step]}}" + (f"; unknown key '{extra[0]}'" if extra else "")
            )
        low, high, step = (_number(value.get(k)) for k in ("low", "high", "step"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(f"{where}: low and high must be numbers")
        if not low < high:
            raise ConfigError(f"{where}: low={low} must be below high={high}")
        log_scale = bool(value.get("log", False))
        if log_scale and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0")
        if log_scale and step is not None:
            raise ConfigError(f"{where}: step and log cannot be combined")
        return ParamSpec(key, low=low, high=high, log=log_scale, step=step)
    raise ConfigError(f"{where}: expected a list of values or {{low, high, log}}, got {value!r}")


def _validate(cfg: SearchConfig) -> None:
    src = cfg.source
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"{src}: sampler={cfg.sampler!r} is unknown; choose one of: {', '.join(SAMPLERS)}")
    pruning.build_pruner(cfg.pruner, cfg.pruner_args, source=f"{src}: pruner")
    if cfg.metric not in METRICS:
        raise ConfigError(f"{src}: metric={cfg.metric!r} is unknown; choose one of: {', '.join(METRICS)}")
    if cfg.direction not in ("minimize", "maximize"):
        raise ConfigError(f"{src}: direction={cfg.direction!r} must be minimize or maximize")
    if cfg.sampler == "grid":
        ranges = [k for k, p in cfg.space.items() if p.is_range]
        if ranges:
            raise ConfigError(f"{src}: space.{ranges[0]}: grid search needs a list of values, not a range")
        if cfg.n_trials and cfg.n_trials > cfg.grid_size:
            log.warning(
                "%s: n_trials=%d is more than the grid's %d points: running the grid once",
                src,
                cfg.n_trials,
                cfg.grid_size,
            )
    try:
        cfg.job_config()
    except ConfigError as exc:
        raise ConfigError(f"{src}: fixed/trial_overrides/epochs_per_trial make a bad job config: {exc}") from None
    for key, spec in cfg.space.items():
        for value in spec.candidates():
            try:
                job = cfg.job_config({key: value})
            except ConfigError as exc:
                raise ConfigError(f"{src}: space.{key}={value!r}: {exc}") from None
            _check_dropout(job, f"{src}: space.{key}={value!r}")


def _check_dropout(job: JobConfig, where: str) -> None:
    """model.dropout is a free mapping in the job config, checked only when the model is built: check it now."""
    if job.model.dropout is None:
        return
    from lightning_modules.models.backbone import DropoutConfig

    try:
        DropoutConfig.coerce(job.model.dropout, DropoutConfig())
    except ConfigError as exc:
        raise ConfigError(f"{where}: model.{exc}") from None


# -- overrides ------------------------------------------------------------------------------------


def overrides(values: dict[str, Any], base: JobConfig) -> list[str]:
    """`key=value` items for `--set`, from dotted keys.

    Keys inside a mapping-valued field (model.dropout.classifier) become one item for the whole
    mapping, merged with the base config's: the job config replaces such mappings as a whole, so
    two separate items would keep only the last.
    """
    return [f"{k}={_yaml_value(v)}" for k, v in _grouped(values, base).items()]


def overlay(values: dict[str, Any], base: JobConfig) -> dict[str, Any]:
    """The nested overlay config (as in best.yaml) that sets `values` on top of `base`."""
    out: dict[str, Any] = {}
    for key, value in _grouped(values, base).items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _grouped(values: dict[str, Any], base: JobConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        field_key, rest = _split_field(key)
        if not rest:
            out[key] = value
            continue
        if field_key not in out:
            current = _get(to_dict(base), field_key)
            out[field_key] = dict(current) if isinstance(current, dict) else {}
        out[field_key][rest] = value
    return out


def _split_field(key: str) -> tuple[str, str]:
    """("model.dropout", "classifier") for a key inside a mapping field; (key, "") otherwise."""
    cls: Any = JobConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part not in cls.model_fields:
            return key, ""  # unknown: load_config names it
        cls = cls.model_fields[part].annotation
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return ".".join(parts[: i + 1]), ".".join(parts[i + 1 :])
    return key, ""


def _get(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _yaml_value(value: Any) -> str:
    """A value as `--set` reads it back (YAML): 1e-06 would come back as a string, 1.0e-06 as a float."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _number(value: Any) -> Any:
    """YAML reads 1e-4 as a string: take it as the number meant."""
    if isinstance(value, str):
        try:
            return int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _without_tracking(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "tracking"}


# -- the search -----------------------------------------------------------------------------------


@dataclass
class _Context:
    cfg: SearchConfig
    data: Path
    out: Path
    launch: Launch
    uri: str
    storage_url: str
    study: Any
    parent_id: str
    base: JobConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: int = 1
    # Set when the search itself is interrupted (Ctrl-C also ends the jobs): their trials stay
    # RUNNING in the study, so a rerun resumes them instead of counting them as failed.
    stopping: threading.Event = field(default_factory=threading.Event)


def run_search(
    cfg: SearchConfig, data: Path, out: Path, *, launch: Launch = subprocess_launch, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Run (or continue) the search in OUT; returns the summary (also in OUT/trials.json, OUT/best.yaml).

    `launch` is called from up to `cfg.parallel` threads at once. A failed job marks its trial FAIL
    and the search goes on; any other error stops it (the running trials finish first).
    """
    from filelock import FileLock, Timeout

    from lightning_modules.data.streaming import read_prepared
    from lightning_modules.tracking import ensure_store, resolve_uri

    data, out = Path(data).resolve(), Path(out).resolve()
    read_prepared(data)  # DataError naming the folder, before any trial starts
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(cfg.base)
    uri = resolve_uri(tracking_uri or base.tracking.tracking_uri)
    ensure_store(uri)
    lock = FileLock(str(out / ".search.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{out}: another search is running in this folder") from None
    try:
        ctx = _open(cfg, data, out, launch, uri, base)
        try:
            summary = _search(ctx)
        except BaseException as exc:
            finish_run(uri, ctx.parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        finish_run(uri, ctx.parent_id)
        return summary
    finally:
        lock.release()


def _open(cfg: SearchConfig, data: Path, out: Path, launch: Launch, uri: str, base: JobConfig) -> _Context:
    """The study (created, or reopened after checking it is the same search) and the parent run."""
    import optuna

    from lightning_modules.distributed import cpu_count

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
    from lightning_modules.data.lineage import data_identity

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
    return _Context(cfg, data, out, launch, uri, storage_url, study, parent_id, base, threads=threads)


def _log_parent_info(uri: str, run_id: str, cfg: SearchConfig) -> None:
    """Params once (MLflow keeps them immutable); the budget as tags, since a rerun may raise it."""
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

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


def _search(ctx: _Context) -> dict[str, Any]:
    from optuna.trial import TrialState

    from lightning_modules.progress import track

    trials = ctx.study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    leftover = [t for t in trials if t.state == TrialState.RUNNING]  # a killed search: resume them
    new = max(0, ctx.cfg.trials_wanted() - len(finished) - len(leftover))
    total = len(leftover) + new
    if finished:
        log.info(
            "search %s: %d trial(s) already finished, %d to resume, %d new", ctx.out, len(finished), len(leftover), new
        )
    for _ in track(_run_trials(ctx, leftover, new), f"search {ctx.cfg.name}", total=total, log_every=30):
        pass
    return _finish(ctx)


def _run_trials(ctx: _Context, leftover: list[Any], new: int) -> Iterator[dict[str, Any]]:
    """Up to `parallel` trials at once; yields each trial's record as it ends."""
    todo = [(t.number, t._trial_id, dict(t.params)) for t in leftover]
    distributions = {k: p.distribution() for k, p in ctx.cfg.space.items()}
    error: BaseException | None = None
    running: set[Future] = set()

    def next_trial() -> tuple[int, int, dict[str, Any]]:
        nonlocal new
        if todo:
            return todo.pop(0)
        new -= 1
        with ctx.lock:
            trial = ctx.study.ask(distributions)
        return trial.number, trial._trial_id, dict(trial.params)

    with ThreadPoolExecutor(max_workers=ctx.cfg.parallel, thread_name_prefix="trial") as pool:
        try:
            while True:
                while error is None and (todo or new > 0) and len(running) < ctx.cfg.parallel:
                    running.add(pool.submit(_run_trial, ctx, *next_trial()))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        yield fut.result()
                    except Exception as exc:  # noqa: BLE001 - stop launching, let the running ones end
                        error = error or exc
        except BaseException:
            ctx.stopping.set()
            raise
    if error is not None:
        raise error


def _run_trial(ctx: _Context, number: int, trial_id: int, params: dict[str, Any]) -> dict[str, Any]:
    """Launch one trial's job and tell the study how it ended (COMPLETE, PRUNED or FAIL)."""
    from optuna.trial import TrialState

    req, trial, child_id = _prepare(ctx, number, trial_id, params)
    log.info("trial %d: %s", number, ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
    error = None
    try:
        result = ctx.launch(req)
        if result.get("status") != "finished":
            raise JobFailed(f"{req.run_dir}: the job ended with status {result.get('status')!r}")
    except JobFailed as exc:
        if ctx.stopping.is_set():
            log.warning("trial %d: interrupted; a rerun with the same --out resumes it", number)
            return {"number": number, "state": "RUNNING", "value": None, "epochs_run": len(_history(req.run_dir))}
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


def _prepare(ctx: _Context, number: int, trial_id: int, params: dict[str, Any]):
    """The trial's nested MLflow run (reopened on a resume) and its job: (JobRequest, Trial, run id)."""
    import optuna

    cfg = ctx.cfg
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
        trial = optuna.trial.Trial(ctx.study, trial_id)
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
    env = {**pruning.trial_env(ctx.storage_url, STUDY_NAME, trial_id), "VISIONFLOW_THREADS": str(ctx.threads)}
    req = JobRequest(
        configs=tuple(map(str, cfg.base)),
        data=ctx.data,
        run_dir=run_dir,
        overrides=tuple(overrides(values, ctx.base)),
        env=env,
    )
    return req, trial, child_id


def _outcome(cfg: SearchConfig, run_dir: Path, error: str | None):
    """(state name, value, epochs run, pruned.json or None, error) of a trial whose job has ended.

    The value is the best epoch's metric (the job keeps that epoch's checkpoint as best.ckpt).
    """
    history = _history(run_dir)
    column, _ = METRICS[cfg.metric]
    scores = [r[column] for r in history if isinstance(r.get(column), (int, float)) and math.isfinite(r[column])]
    value = (min if cfg.direction == "minimize" else max)(scores) if scores else None
    pruned = pruning.read_pruned(run_dir)
    if error is None and value is None and pruned is None:
        error = f"{run_dir}: the job logged no {cfg.metric} (history.json column {column})"
    state = "FAIL" if error else "PRUNED" if pruned else "COMPLETE"
    return state, value, len(history), pruned, error


def _tell(ctx: _Context, number: int, state: Any, value: float | None) -> None:
    try:
        ctx.study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as exc:
        # GridSampler calls study.stop() once the grid is done, which only works inside
        # study.optimize(); the trial's state is stored before that (optuna issue #4121).
        if "Study.stop" not in str(exc):
            raise


def _tag_child(ctx: _Context, run_id: str, number: int, state: str, value: float | None, error: str | None) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ctx.uri)
    client.set_tag(run_id, "state", state)
    client.set_tag(run_id, "trial_number", str(number))
    if value is not None:
        # One sortable column per trial in the MLflow UI: the value the search ranks trials by.
        client.log_metric(run_id, "search/value", float(value))
    if error:
        client.set_tag(run_id, "error", error[-5000:])
        client.set_terminated(run_id, status="FAILED")


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError:
        return []


# -- results --------------------------------------------------------------------------------------


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, params, value, epochs_run, run_dir, mlflow_run_id, ..."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        run_dir = t.user_attrs.get("run_dir")
        epochs = t.user_attrs.get("epochs_run")
        if epochs is None and run_dir:
            epochs = len(_history(Path(run_dir)))
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "epochs_run": epochs,
                "run_dir": run_dir,
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                **{k: t.user_attrs[k] for k in ("pruned_epoch", "error") if k in t.user_attrs},
            }
        )
    return rows


def _finish(ctx: _Context) -> dict[str, Any]:
    from optuna.trial import TrialState

    from lightning_modules import tracking

    cfg, out = ctx.cfg, ctx.out
    rows = trial_records(ctx.study)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    complete = [t for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = ctx.study.best_trial if complete else None
    (out / TRIALS_FILE).write_text(json.dumps(rows, indent=1))
    best_path = None
    if best is not None:
        best_path = write_best(
            cfg, ctx.base, best.params, out / BEST_FILE, comment=f"trial {best.number}: {cfg.metric}={best.value:.5g}"
        )
    else:
        log.warning("search %s: no trial completed, so there is no best configuration", out)
    figure = plot_search(rows, cfg, out / FIGURE)
    metrics = {"n_complete": counts["COMPLETE"], "n_pruned": counts["PRUNED"], "n_failed": counts["FAIL"]}
    if best is not None:
        metrics["best_value"] = best.value
    tracking.log_metrics(ctx.uri, ctx.parent_id, metrics, step=len(rows))
    for path, folder in ((best_path, "search"), (out / TRIALS_FILE, "search"), (figure, "figures")):
        if path is not None:
            tracking.log_artifact(ctx.uri, ctx.parent_id, path, folder)
    if best is not None:
        tracking.set_tag(ctx.uri, ctx.parent_id, "best_trial", str(best.number))
    return {
        "out": str(out),
        "study": STUDY_NAME,
        "storage": ctx.storage_url,
        "metric": cfg.metric,
        "direction": cfg.direction,
        "n_trials": len(rows),
        **metrics,
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "best_params": dict(best.params) if best else None,
        "best_config": str(best_path) if best_path else None,
        "figure": str(figure) if figure else None,
        "trials": rows,
        "parent_run_id": ctx.parent_id,
        "tracking_uri": ctx.uri,
        "experiment": cfg.experiment,
    }


def write_best(cfg: SearchConfig, base: JobConfig, params: dict[str, Any], path: Path, comment: str = "") -> Path:
    """best.yaml: the searched values (and the search's fixed settings) as an overlay job config."""
    nested = overlay({**cfg.fixed, **params}, base)
    header = (
        f"# Best configuration of search {cfg.name} ({cfg.source}); {comment}\n"
        f"# Overlay on {cfg.base_names()}: python -m lightning_modules.train BASE {path.name} ...\n"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + yaml.safe_dump(nested, sort_keys=True))
    tmp.replace(path)
    return path


def plot_search(rows: list[dict[str, Any]], cfg: SearchConfig, out: Path) -> Path | None:
    """Parallel coordinates (one line per trial, colored by value; pruned dashed) and value vs each param.

    Our own plot rather than optuna.visualization: that one leaves pruned trials out. Outlying values
    (a diverged trial's loss) are clipped to Tukey's fences, so they do not flatten the rest.
    """
    shown = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED") and r["value"] is not None and r["params"]]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(cfg.space)
    logs = {k: _log_scale(cfg.space[k], [r["params"].get(k) for r in shown]) for k in keys}
    raw = np.array([r["value"] for r in shown], dtype=float)
    q1, q3 = np.percentile(raw, [25, 75])
    values = np.clip(raw, q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)).tolist()
    clipped = int((np.array(values) != raw).sum())
    columns = [_axis([r["params"].get(k) for r in shown], logs[k]) for k in keys]
    columns.append(_axis(values, False))
    lo, hi = min(values), max(values) if max(values) > min(values) else min(values) + 1
    norm = plt.Normalize(lo, hi)
    cmap = plt.get_cmap("viridis_r" if cfg.direction == "minimize" else "viridis")  # better = brighter
    n = len(keys)
    fig = plt.figure(figsize=(max(8, 2.2 * (n + 1)), 8))
    ax = fig.add_subplot(2, 1, 1)
    for i, r in enumerate(shown):
        pruned = r["state"] == "PRUNED"
        ax.plot(
            range(n + 1),
            [c[0][i] for c in columns],
            color=cmap(norm(values[i])),
            lw=1.2 if pruned else 2.2,
            ls="--" if pruned else "-",
            alpha=0.6 if pruned else 0.95,
            marker="o",
            ms=3,
        )
    for j, (_, labels) in enumerate(columns):
        ax.axvline(j, color="0.7", lw=0.8)
        for y, text in labels:
            ax.text(j + 0.02, y, text, fontsize=7, va="center")
    ax.set_xticks(range(n + 1), [*keys, cfg.metric])
    ax.set_yticks([])
    ax.set_title(
        f"{cfg.name}: {len(shown)} trials ({sum(r['state'] == 'PRUNED' for r in shown)} pruned, dashed)"
        + (f"; {clipped} outlying {cfg.metric} clipped" if clipped else "")
    )
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=cfg.metric)
    for j, key in enumerate(keys):
        _scatter(
            fig.add_subplot(2, n, n + j + 1),
            shown,
            values,
            key,
            cfg.metric if j == 0 else None,
            logs[key],
            lambda v: cmap(norm(v)),
        )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _scatter(
    sub, shown: list[dict[str, Any]], values: list[float], key: str, ylabel: str | None, xlog: bool, color
) -> None:
    """Value against one parameter: completed trials as dots, pruned ones as crosses."""
    from matplotlib.ticker import NullFormatter

    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        pts = [(r["params"].get(key), v) for r, v in zip(shown, values) if r["state"] == state]
        if pts:
            xs, ys = zip(*pts)
            sub.scatter([_plottable(x) for x in xs], ys, marker=marker, label=state.lower(), c=[color(y) for y in ys])
    if xlog:
        sub.set_xscale("log")
        sub.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on narrow panels
    sub.set_xlabel(key, fontsize=8)
    if ylabel:
        sub.set_ylabel(ylabel)
        sub.legend(fontsize=7)
    sub.tick_params(labelsize=7)


def _log_scale(spec: ParamSpec, values: list[Any]) -> bool:
    """A log range, or listed positive numbers spanning two decades or more (learning rates)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        return False
    return spec.log or max(values) / min(values) >= 100


def _axis(raw: list[Any], log_scale: bool) -> tuple[list[float], list[tuple[float, str]]]:
    """Values scaled to 0..1 for one parallel-coordinates axis, and a few (position, label) ticks."""
    import numpy as np

    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        levels = sorted({str(v) for v in raw})
        pos = {v: i / max(1, len(levels) - 1) for i, v in enumerate(levels)}
        return [pos[str(v)] for v in raw], [(p, v) for v, p in pos.items()]
    x = np.array(raw, dtype=float)
    if log_scale:  # only ever asked for positive values (_log_scale)
        x = np.log10(x)
    lo, hi = float(x.min()), float(x.max())
    scaled = [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in x]
    ticks = [(0.0, lo), (1.0, hi)] if hi > lo else [(0.5, lo)]
    fmt = (lambda v: f"{10**v:.3g}") if log_scale else (lambda v: f"{v:.3g}")
    return scaled, [(p, fmt(v)) for p, v in ticks]


def _plottable(x: Any) -> Any:
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- command line ---------------------------------------------------------------------------------


def format_trials(summary: dict[str, Any]) -> str:
    """The trials as a text table, best first."""
    rows = summary["trials"]
    keys = sorted({k for r in rows for k in r["params"]})
    sign = 1 if summary["direction"] == "minimize" else -1
    order = sorted(
        rows,
        key=lambda r: (
            r["value"] is None,
            r["state"] != "COMPLETE",
            sign * (r["value"] if r["value"] is not None else 0),
        ),
    )
    head = ["trial", "state", summary["metric"], "epochs", *keys]
    table = [
        [
            str(r["number"]),
            r["state"],
            f"{r['value']:.4f}" if r["value"] is not None else "-",
            str(r["epochs_run"] if r["epochs_run"] is not None else "-"),
            *(_short(r["params"].get(k, "-")) for k in keys),
        ]
        for r in order
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *table])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.search", description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path, help="search YAML (e.g. configs/search-cpu.yaml)")
    p.add_argument("--data", required=True, type=Path, help="prepared classification folder")
    p.add_argument("--out", required=True, type=Path, help="search folder (rerun the same OUT to continue)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: the job config's, else $MLFLOW_TRACKING_URI or ./mlflow.db)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    log_to_stderr()
    try:
        cfg = load_search_config(args.config)
        summary = run_search(cfg, args.data, args.out, tracking_uri=args.tracking_uri)
    except VisionflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: rerun with --out {args.out} to continue (unfinished trials resume)", file=sys.stderr)
        return 130
    print(format_trials(summary))
    print(
        f"\n{summary['n_complete']} complete, {summary['n_pruned']} pruned, {summary['n_failed']} failed; "
        f"MLflow parent run {summary['parent_run_id']} ({summary['tracking_uri']})"
    )
    if summary["best_config"]:
        print(
            f"best: trial {summary['best_trial']} {summary['metric']}={summary['best_value']:.4f} "
            f"-> {summary['best_config']}\n{Path(summary['best_config']).read_text()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
