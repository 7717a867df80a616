"""The one contract between whoever launches a training job and the job itself. No torch here.

`JobRequest` is a job: config files, prepared data, run folder, `--set` overrides and extra environment.
It builds the one command line (`python -m lightning_modules.train ...`) that the CLI, torchrun, the
Dagster launcher, studies and searches all run, and it validates the whole job config without starting
anything (`load_config` needs no torch), so a bad override fails in milliseconds with the field named.

`JobResult` is what the job writes to RUN_DIR/result.json on rank 0 and reports through Pipes; the
launcher and the assets read it. Its required keys are what a launcher checks arrived.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from lightning_modules.errors import VisionflowError

if TYPE_CHECKING:  # config.py needs no torch either; imported lazily to keep this module tiny
    from lightning_modules.config import JobConfig

MODULE = "lightning_modules.train"
RESULT_FILE = "result.json"


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """One training job: `python -m lightning_modules.train *configs --data D --out RUN_DIR --set k=v ...`."""

    configs: tuple[str, ...]
    data: Path
    run_dir: Path
    overrides: tuple[str, ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept lists and Paths from callers; keep the request immutable and hashable-ish.
        object.__setattr__(self, "configs", tuple(str(c) for c in self.configs))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "env", dict(self.env))

    def argv(self) -> list[str]:
        """The job's own arguments (after `-m lightning_modules.train`)."""
        args = [*self.configs, "--data", str(self.data), "--out", str(self.run_dir)]
        for item in self.overrides:
            args += ["--set", item]
        return args

    def module_args(self) -> list[str]:
        """`-m lightning_modules.train ...`: what follows the interpreter or torchrun's options."""
        return ["-m", MODULE, *self.argv()]

    def command(self, python: str = sys.executable) -> list[str]:
        """The whole command line for one process (no torchrun)."""
        return [python, *self.module_args()]

    def with_overrides(self, *items: str) -> JobRequest:
        """The same job with more `--set` items (later ones win)."""
        return dataclasses.replace(self, overrides=(*self.overrides, *items))

    def with_env(self, **env: str) -> JobRequest:
        return dataclasses.replace(self, env={**self.env, **env})

    def validate(self) -> JobConfig:
        """The job's whole config as the job will read it; ConfigError naming the file and the field."""
        from lightning_modules.config import load_config  # lazy: config pulls in pydantic; keep this module tiny

        return load_config(list(self.configs), list(self.overrides))


class _Reported(TypedDict):
    """What every finished job reports: a launcher fails the step when one of these is missing."""

    status: str  # "finished" (or "fast_dev_run")
    run_dir: str
    mlflow_run_id: str | None
    best_checkpoint: str | None
    global_step: int
    data_version: str


class JobResult(_Reported, total=False):
    """RUN_DIR/result.json: the job's outcome, the same on the command line, under torchrun and in Dagster."""

    tracking_uri: str
    experiment: str
    epochs: int
    stopped_early: bool
    task: str
    monitor: str  # the metric that picked best_checkpoint, e.g. "val/loss", "val/fitness"
    monitor_mode: str  # "min" | "max"
    best_score: float | None
    best_val_loss: float | None
    last_checkpoint: str | None
    metrics: dict[str, float]  # the last logged value of every scalar metric
    fit_seconds_this_attempt: float
    init: str  # "scratch" | "pretrained" | "torchvision"
    history: list[dict[str, Any]]  # one row per epoch
    figures: list[str]
    final: dict[str, float]  # detection: final evaluation numbers
    # the world and the batch
    effective_batch: int
    lr_effective: float
    devices: int
    num_nodes: int
    world_size: int
    threads_per_rank: int
    ddp_compression: str  # what the all-reduce sent: none | fp16 | bf16 (trainer.ddp_compression resolved)
    # what the task adds (train_samples, val_samples, num_classes, image_size, anchors, ...)
    num_classes: int
    train_samples: int | None
    val_samples: int | None
    image_size: int


REQUIRED_KEYS: tuple[str, ...] = tuple(sorted(JobResult.__required_keys__))
# What the job prints as its last stdout line (a short summary; result.json holds everything).
SUMMARY_KEYS = (
    "status",
    "run_dir",
    "mlflow_run_id",
    "global_step",
    "epochs",
    "best_val_loss",
    "monitor",
    "best_score",
    "best_checkpoint",
)


class JobFailed(VisionflowError, RuntimeError):
    """A launched job exited non-zero or left no result; the message carries its run folder (and stderr tail)."""


def read_result(run_dir: str | Path) -> JobResult:
    """RUN_DIR/result.json, checked for the required keys."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise JobFailed(f"{run_dir}: the job finished without writing {RESULT_FILE}")
    result = json.loads(path.read_text())
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise JobFailed(f"{path}: not a job result (missing {', '.join(missing)})")
    return result


def missing_keys(reported: Mapping[str, Any]) -> list[str]:
    """The required result keys absent from what a job reported (e.g. Pipes metadata)."""
    return [k for k in REQUIRED_KEYS if k not in reported]


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The short form of a result the job prints last on stdout."""
    out = {k: result.get(k) for k in SUMMARY_KEYS if k in result}
    out["metrics"] = {
        k: round(v, 4)
        for k, v in (result.get("metrics") or {}).items()
        if k.startswith(("val/", "train/")) and isinstance(v, float)
    }
    return out
