"""The job's result (contract.JobResult) from a finished Trainer: what result.json holds and Pipes reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as L

from lightning_modules.config import JobConfig
from lightning_modules.contract import JobResult
from lightning_modules.training.callbacks import EpochHistory
from lightning_modules.training.mlflow_run import MlflowRun, init_kind


def job_result(
    trainer: L.Trainer,
    cfg: JobConfig,
    task: Any,
    run_dir: Path,
    mlflow: MlflowRun,
    *,
    data_version: str,
    seconds: float,
    extra: dict[str, Any],
) -> JobResult:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best_cb = next(c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None) == task.monitor)
    best_score = float(best_cb.best_model_score) if best_cb.best_model_score is not None else None  # type: ignore[attr-defined]
    history_cb = next((c for c in trainer.callbacks if isinstance(c, EpochHistory)), None)  # type: ignore[attr-defined]
    history = history_cb.history if history_cb is not None else []
    last = run_dir / "checkpoints" / "last.ckpt"
    return {
        "status": "finished",
        "run_dir": str(run_dir),
        "tracking_uri": mlflow.uri,
        "experiment": mlflow.experiment,
        "mlflow_run_id": mlflow.run_id,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "stopped_early": trainer.current_epoch < cfg.trainer.max_epochs,
        "best_checkpoint": best_cb.best_model_path or None,  # type: ignore[attr-defined]
        "task": cfg.task,
        "monitor": task.monitor,
        "monitor_mode": task.mode,
        "best_score": best_score,
        "best_val_loss": best_score if task.monitor == "val/loss" else best_row_value(history, "val_loss", task),
        "last_checkpoint": str(last) if last.is_file() else None,
        "metrics": metrics,
        "fit_seconds_this_attempt": round(seconds, 2),
        "data_version": data_version,
        "init": init_kind(cfg),
        "history": history,
        **extra,  # type: ignore[typeddict-item]
    }


def best_row_value(history: list[dict[str, Any]], key: str, task: Any) -> float | None:
    """`key` in the epoch whose monitored metric was best (what the best checkpoint holds)."""
    column = task.monitor.replace("/", "_")  # "val/fitness" -> "val_fitness"
    rows = [r for r in history if r.get(column) is not None]
    if not rows:
        return None
    pick = min if task.mode == "min" else max
    return pick(rows, key=lambda r: r[column]).get(key)
