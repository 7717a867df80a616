"""The "pipes" reporter: a training job launched by Dagster (Pipes) reports back through Dagster Pipes.

Chosen with VISIONFLOW_REPORTER=pipes. Only global rank 0 gets one (`reporting.make_reporter`):
every torchrun rank inherits the Pipes environment, and a second process opening Pipes fails the
Dagster step. Uses `dagster_pipes` only (the light external-process half of Pipes), never `dagster`.

What arrives in Dagster:
- log lines: the job's world and batch at start, one line per epoch;
- one asset materialization at the end, metadata keys in `METADATA_KEYS`;
- an error (exception with traceback) when the job fails on rank 0; the process still exits non-zero.
The result also goes to RUN_DIR/result.json, like the default "json" reporter.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from lightning_modules.contract import REQUIRED_KEYS
from lightning_modules.reporting.reporters import JsonReporter

log = logging.getLogger("visionflow")

# Keys of the materialization's metadata: every required key of the job's result (the launcher checks
# they arrived), then what the asset page shows, some derived from the history (val_acc1_best, ...).
_SHOWN = (
    "val_acc1",
    "val_acc5",
    "val_loss",
    "val_acc1_best",
    "val_acc1_final",
    "best_epoch",
    "epochs",
    "effective_batch",
    "lr_effective",
    "world_size",
    "last_checkpoint",
    "tracking_uri",
    "experiment",
    "history",
    "figures",
    "fit_seconds",
)
METADATA_KEYS = (*REQUIRED_KEYS, *(k for k in _SHOWN if k not in REQUIRED_KEYS))
_EPOCH_KEYS = ("train_loss", "val_loss", "val_acc1", "val_acc5", "val_map_50", "val_map", "lr")


def md(value: Any, kind: str) -> dict[str, Any]:
    """A Pipes metadata value with an explicit type; None becomes a "null" value."""
    if value is None:
        return {"raw_value": None, "type": "null"}
    if kind == "float":
        value = float(value)
    elif kind == "int":
        value = int(value)
    elif kind in ("text", "path", "url"):
        value = str(value)
    return {"raw_value": value, "type": kind}


def best_row(history: list[dict[str, Any]], monitor: str = "val/loss", mode: str = "min") -> dict[str, Any] | None:
    """The epoch the best checkpoint comes from (best `monitor`, as ModelCheckpoint picks it)."""
    key = monitor.replace("/", "_")
    rows = [r for r in history if _finite(r.get(key))]
    if not rows:
        return None
    return (min if mode == "min" else max)(rows, key=lambda r: r[key])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def materialization_metadata(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The asset metadata for a job result (`train.fit`'s result dict)."""
    history = result.get("history") or []
    best = best_row(history, result.get("monitor", "val/loss"), result.get("monitor_mode", "min")) or {}
    last = history[-1] if history else {}
    metrics = result.get("metrics") or {}
    acc1 = [r["val_acc1"] for r in history if _finite(r.get("val_acc1"))]
    return {
        "status": md(result.get("status"), "text"),
        # The metrics of the model handed on (the best checkpoint), then best and final top-1.
        "val_acc1": md(best.get("val_acc1", metrics.get("val/acc1")), "float"),
        "val_acc5": md(best.get("val_acc5", metrics.get("val/acc5")), "float"),
        "val_loss": md(best.get("val_loss", result.get("best_val_loss")), "float"),
        "val_acc1_best": md(max(acc1) if acc1 else None, "float"),
        "val_acc1_final": md(last.get("val_acc1", metrics.get("val/acc1")), "float"),
        "best_epoch": md(best.get("epoch"), "int"),
        "epochs": md(result.get("epochs"), "int"),
        "global_step": md(result.get("global_step"), "int"),
        "effective_batch": md(result.get("effective_batch"), "int"),
        "lr_effective": md(result.get("lr_effective"), "float"),
        "world_size": md(result.get("world_size"), "int"),
        "best_checkpoint": md(result.get("best_checkpoint"), "path"),
        "last_checkpoint": md(result.get("last_checkpoint"), "path"),
        "run_dir": md(result.get("run_dir"), "path"),
        "mlflow_run_id": md(result.get("mlflow_run_id"), "text"),
        "tracking_uri": md(result.get("tracking_uri"), "text"),
        "experiment": md(result.get("experiment"), "text"),
        "history": md(history, "json"),
        "figures": md([str(p) for p in result.get("figures") or []], "json"),
        "data_version": md(result.get("data_version"), "text"),
        "fit_seconds": md(result.get("fit_seconds_this_attempt"), "float"),
        "task": md(result.get("task", "classification"), "text"),
        **{
            k: md(v, "float")
            for k, v in best.items()  # the rest of the best epoch's validation (detection: mAP)
            if k.startswith("val_") and k not in ("val_loss", "val_acc1", "val_acc5") and _finite(v)
        },
    }


class PipesReporter(JsonReporter):
    """Opens Dagster Pipes on creation (rank 0 only); reports logs, the materialization, or the error."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir)
        from dagster_pipes import open_dagster_pipes  # lazy: only a job that Dagster launched speaks Pipes

        self.ctx = open_dagster_pipes()
        self._closed = False

    def start(self, info: dict[str, Any]) -> None:
        self.ctx.log.info(
            f"training: world size {info.get('world_size')} ({info.get('devices')} device(s) x "
            f"{info.get('num_nodes')} node(s), {info.get('threads_per_rank')} thread(s) per rank), effective "
            f"batch {info.get('effective_batch')}, lr {info.get('lr_effective'):.4g}, "
            f"run folder {info.get('run_dir')}, "
            f"MLflow run {info.get('mlflow_run_id')}"
        )

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        parts = [f"{k} {metrics[k]:.4g}" for k in _EPOCH_KEYS if isinstance(metrics.get(k), (int, float))]
        total = metrics.get("max_epochs")
        of = f"/{total}" if isinstance(total, int) and total > 0 else ""
        self.ctx.log.info(f"epoch {epoch}{of}: " + ", ".join(parts))

    def finish(self, result: dict[str, Any]) -> None:
        super().finish(result)  # result.json first: a retry trusts it
        extras = getattr(self.ctx, "extras", None) or {}
        asset_key = extras.get("asset_key") if isinstance(extras, dict) else None
        self.ctx.report_asset_materialization(metadata=materialization_metadata(result), asset_key=asset_key)

    def fail(self, exc: BaseException) -> None:
        """Send the exception (with its traceback) to Dagster and close Pipes; the caller re-raises / exits."""
        if self._closed:
            return
        try:
            self.ctx.log.error(f"training failed: {type(exc).__name__}: {exc}")
            self.ctx.__exit__(type(exc), exc, exc.__traceback__ or _traceback_of(exc))
        finally:
            self._closed = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.ctx.close()


def _traceback_of(exc: BaseException):
    """A traceback for an exception that was never raised (Pipes wants all three of type, value, tb)."""
    try:
        raise exc
    except BaseException as e:  # noqa: BLE001
        return e.__traceback__
