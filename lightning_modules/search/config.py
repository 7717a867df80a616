"""The search file (SEARCH_YAML): its schema `SearchConfig` and its loader `load_search_config`.

Every problem is a ConfigError naming the file and the key. The settings are a pydantic model (unknown
keys, wrong types, counts below 1 and unknown sampler/pruner/metric/direction names fail) whose
errors are worded as the search always worded them; the space (search.space), the base job config(s) and whether
every candidate value makes a valid job config are checked here too, before any trial starts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, InstanceOf, StrictInt, StrictStr, ValidationError

from lightning_modules.config import JobConfig, load_config, read_yaml_mapping, to_dict
from lightning_modules.errors import ConfigError
from lightning_modules.paths import project_root
from lightning_modules.search import pruning
from lightning_modules.search.overrides import overrides
from lightning_modules.search.space import ParamSpec, parse_param

log = logging.getLogger("visionflow")

Direction = Literal["minimize", "maximize"]
# The search metric -> (its column in a job's history.json, default direction).
METRICS: dict[str, tuple[str, Direction]] = {
    "val/loss": ("val_loss", "minimize"),
    "val/acc1": ("val_acc1", "maximize"),
    "val/acc5": ("val_acc5", "maximize"),
}
Metric = Literal["val/loss", "val/acc1", "val/acc5"]
Sampler = Literal["grid", "random"]  # the search's SAMPLERS (lightning_modules.search.study)
Pruner = Literal["median", "successive_halving", "none"]  # pruning.PRUNERS
Count = Annotated[StrictInt, Field(ge=1)]
if set(get_args(Metric)) != set(METRICS) or set(get_args(Pruner)) != set(pruning.PRUNERS):
    raise RuntimeError("search.config: Metric/Pruner must list METRICS/pruning.PRUNERS")


class SearchConfig(BaseModel):
    """A search, as read from SEARCH_YAML. Paths are absolute; `source` is the file, for messages."""

    model_config = ConfigDict(extra="forbid")

    base: list[Path]
    space: dict[str, InstanceOf[ParamSpec]]
    sampler: Sampler = "random"
    seed: StrictInt = 0
    pruner: Pruner = "median"
    pruner_args: dict[Any, Any] | None = None  # None: pruning.PRUNER_DEFAULTS for the pruner
    n_trials: Count | None = None  # None: the grid's size (grid) or 10 (random)
    parallel: Count = 1
    epochs_per_trial: Count = 3
    metric: Metric = "val/loss"
    direction: Direction | None = None  # None: METRICS' default for the metric
    experiment: StrictStr = "visionflow-search"
    name: StrictStr | None = None  # the MLflow parent run's name; None: the file's stem
    # Job settings that are part of the searched configuration (also written to best.yaml) ...
    fixed: dict[Any, Any] = Field(default_factory=dict)
    # ... and settings for the short trial jobs only (not in best.yaml), e.g. data.num_workers.
    trial_overrides: dict[Any, Any] = Field(default_factory=dict)
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
        base = load_config([*self.base])
        values = {**self.fixed, **self.trial_overrides, "trainer.max_epochs": self.epochs_per_trial, **(params or {})}
        return load_config([*self.base], overrides(values, base))


_KEYS = set(SearchConfig.model_fields) - {"source"}


def load_search_config(path: str | Path) -> SearchConfig:
    """Read and check SEARCH_YAML; every problem is a ConfigError naming the file and the key."""
    path = Path(path)
    raw = read_yaml_mapping(path, "search config file", "a mapping (base, space, sampler, ...)")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
    for key in ("base", "space"):
        if not raw.get(key):
            raise ConfigError(f"{path}: '{key}' is required")
    # An empty section (`fixed:`) is no settings.
    settings = {k: {} if v is None and k in ("fixed", "trial_overrides") else v for k, v in raw.items()}
    base = raw["base"] if isinstance(raw["base"], list) else [raw["base"]]
    if not isinstance(raw["space"], dict):
        raise ConfigError(f"{path}: 'space' must map job-config keys (e.g. optim.lr) to a list or {{low, high}}")
    settings["base"] = [_find_base(b, path) for b in base]
    settings["space"] = {str(k): parse_param(str(k), v, path) for k, v in raw["space"].items()}
    source = path.resolve()
    try:
        cfg = SearchConfig.model_validate({**settings, "source": source})
    except ValidationError as exc:
        raise _settings_error(exc, settings, path, source) from None
    cfg.name = cfg.name or path.stem
    if cfg.pruner_args is None:
        cfg.pruner_args = dict(pruning.PRUNER_DEFAULTS.get(cfg.pruner, {}))
    cfg.direction = cfg.direction or METRICS[cfg.metric][1]
    _validate(cfg)
    return cfg


# Choice keys: a wrong name is reported against the resolved file, as the checks after loading do.
_CHOICES = {
    "sampler": lambda v: f"sampler={v!r} is unknown; choose one of: {', '.join(get_args(Sampler))}",
    "pruner": lambda v: f"pruner: pruner={v!r} is unknown; choose one of: {', '.join(pruning.PRUNERS)}",
    "metric": lambda v: f"metric={v!r} is unknown; choose one of: {', '.join(METRICS)}",
    "direction": lambda v: f"direction={v!r} must be minimize or maximize",
}
_INT_KEYS = ("seed", "n_trials", "parallel", "epochs_per_trial")
_DICT_KEYS = ("pruner_args", "fixed", "trial_overrides")


def _settings_error(exc: ValidationError, settings: dict[str, Any], path: Path, source: Path) -> ConfigError:
    """The first pydantic error as a ConfigError naming the file and the key."""
    error = exc.errors()[0]
    key = str(error["loc"][0]) if error["loc"] else ""
    value = settings.get(key)
    if key in _CHOICES and (value is None or isinstance(value, str)):
        return ConfigError(f"{source}: {_CHOICES[key](value)}")
    if error["type"] == "greater_than_equal":
        return ConfigError(f"{path}: {key}={value} must be >= 1")
    if key in _DICT_KEYS:
        return ConfigError(f"{path}: {key} must be a mapping (e.g. {{optim.name: sgd}})")
    if key in _INT_KEYS:
        return ConfigError(f"{path}: {key}={value!r} must be an integer")
    if key in SearchConfig.model_fields and error["type"] in ("string_type", "literal_error"):
        return ConfigError(f"{path}: {key}={value!r} must be a string")
    return ConfigError(f"{path}: {key}={value!r}: {error['msg']}")


def _find_base(name: Any, path: Path) -> Path:
    """A base job config: relative to the search file's folder, else to the project root."""
    p = Path(str(name))
    for candidate in [p] if p.is_absolute() else [path.parent / p, project_root() / p]:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{path}: base: job config {name} not found (next to this file or in {project_root()})")


def _validate(cfg: SearchConfig) -> None:
    """What the schema cannot say: the pruner's arguments, the grid, and the job config of every candidate."""
    src = cfg.source
    pruning.build_pruner(cfg.pruner, cfg.pruner_args, source=f"{src}: pruner")
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
                cfg.job_config({key: value})  # the whole job config, model.dropout included
            except ConfigError as exc:
                raise ConfigError(f"{src}: space.{key}={value!r}: {exc}") from None


def _without_tracking(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "tracking"}
