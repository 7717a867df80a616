"""The search space: one `ParamSpec` per searched job-config key, read from the search file's `space`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_modules.errors import ConfigError

_RANGE_KEYS = {"low", "high", "log", "step"}


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
        # optuna is heavy (sqlalchemy, alembic): loaded only when a search runs
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None  # a range (parse_param)
        if _is_int(self.low) and _is_int(self.high) and (self.step is None or _is_int(self.step)):
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


def parse_param(key: str, value: Any, path: Path) -> ParamSpec:
    """A list of values or a {low, high[, log][, step]} range; a ConfigError names the file and space.KEY."""
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
