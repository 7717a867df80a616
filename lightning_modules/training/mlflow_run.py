"""The job's MLflow run, in one callback: opened (or resumed) on rank 0 when the job is built, metrics
through its Lightning logger, figures, history and the best checkpoint when it ends, the error tagged
when it fails. Ranks other than 0 (and fast_dev_run) get an inactive one with a silent logger."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as L

from lightning_modules import tracking
from lightning_modules.config import JobConfig, dump_yaml, flatten, to_dict
from lightning_modules.contract import JobResult
from lightning_modules.errors import VisionflowError
from lightning_modules.training.trainer import SilentLogger

log = logging.getLogger("visionflow")


def init_kind(cfg: JobConfig) -> str:
    if cfg.model.pretrained_checkpoint:
        return "pretrained"
    return "torchvision" if cfg.model.torchvision_weights else "scratch"


class MlflowRun(L.Callback):
    """The MLflow run of RUN_DIR (see `tracking.open_run`: a rerun or retry resumes into the same run)."""

    def __init__(
        self, cfg: JobConfig, run_dir: Path, data_dir: Path, data_version: str, params: dict[str, Any], *, active: bool
    ):
        self.cfg, self.run_dir = cfg, run_dir
        self.uri = tracking.resolve_uri(cfg.tracking.tracking_uri)
        self.run_id: str | None = None
        self.created = False
        self.logger: Any = SilentLogger()
        self.params: dict[str, Any] = {}
        if active:
            self._open(data_dir, data_version, params)

    def _open(self, data_dir: Path, data_version: str, params: dict[str, Any]) -> None:
        cfg = self.cfg
        tracking.ensure_store(self.uri)
        tags = {
            **cfg.tracking.tags,
            "git_sha": tracking.git_sha(),
            "data_version": data_version,
            "data_dir": str(data_dir.resolve()),
            "run_dir": str(self.run_dir),
            "model": cfg.model.name,
            "init": init_kind(cfg),
            "task": cfg.task,
        }
        self.run_id, self.created = tracking.open_run(
            self.uri, cfg.tracking.experiment, self.run_dir, cfg.tracking.run_name, tags, run_id=cfg.tracking.run_id
        )
        unused = tuple(f"{s}." for s in cfg.unused_sections())
        job_params = {k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith(unused)}
        self.params = {**job_params, **params}  # also what other trackers get (tracking/loggers.py)
        # A run handed over (tracking.run_id) is not "created" here but still needs the job's params.
        if self.created or not tracking.run_info_logged(self.uri, self.run_id):
            tracking.log_run_info(self.uri, self.run_id, params=self.params, tags=tags, config_yaml=dump_yaml(cfg))
            for extra_file in ("tuned.yaml", "figures/lr_find.png"):
                if (self.run_dir / extra_file).is_file():
                    tracking.log_artifact(self.uri, self.run_id, self.run_dir / extra_file, "tuning")
        self.logger = tracking.make_logger(self.uri, cfg.tracking.experiment, self.run_id)

    @property
    def experiment(self) -> str:
        return tracking.experiment_name(self.uri, self.run_id) if self.run_id else self.cfg.tracking.experiment

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.run_id and isinstance(exception, VisionflowError):
            tracking.set_tag(self.uri, self.run_id, "error", str(exception))

    def finish(self, result: JobResult, module: Any, dm: Any) -> None:
        """Figures, history, summary metrics and the best checkpoint into the run; figures into `result`."""
        if not self.run_id:
            return
        uri, run_id, figures = self.uri, self.run_id, self.run_dir / "figures"
        made = []
        if getattr(module, "last_confusion", None) is not None:
            made.append(
                tracking.confusion_figure(
                    module.last_confusion.numpy(), dm.class_names, figures / "confusion_matrix.png"
                )
            )
        if hasattr(module, "final_figures"):  # detection: PR curves, confusion matrix, drawn samples
            paths, numbers = module.final_figures(dm, figures)
            made += paths
            tracking.log_metrics(uri, run_id, numbers, step=result["global_step"])
            result["final"] = numbers
        curves = tracking.learning_curves(uri, run_id, figures / "learning_curves.png")
        if curves:
            made.append(curves)
        if (figures / "gradient_flow.png").is_file():
            made.append(figures / "gradient_flow.png")
        for path in made:
            tracking.log_figure(uri, run_id, path)
        if (self.run_dir / "history.json").is_file():
            tracking.log_artifact(uri, run_id, self.run_dir / "history.json", "history")
        summary = {"effective_batch": result["effective_batch"], "lr_effective": result["lr_effective"]}
        if result.get("best_val_loss") is not None:
            summary["best/val_loss"] = result["best_val_loss"]
        if result.get("best_score") is not None:
            summary[f"best/{result['monitor'].split('/')[-1]}"] = result["best_score"]
        tracking.log_metrics(uri, run_id, summary, step=result["global_step"])
        if self.cfg.tracking.log_checkpoint and result["best_checkpoint"]:
            tracking.log_artifact(uri, run_id, Path(result["best_checkpoint"]), "checkpoints")
        result["figures"] = [str(p) for p in made]
