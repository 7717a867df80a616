"""Training callbacks: gradient flow per layer, a NaN/inf guard, checkpoints, early stopping."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, Timer
from torch import nn

from lightning_modules.errors import VisionflowError
from lightning_modules.training.throughput import DataWait

log = logging.getLogger("visionflow")


class TrainingDiverged(VisionflowError, RuntimeError):
    """Loss or gradients became NaN/inf; the message names the step and the metric."""


def layer_order(model: nn.Module, weight_layers_only: bool = True) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters directly, in registration (= depth) order.

    weight_layers_only keeps layers with a matrix/kernel (conv, linear): norm layers in between
    have much smaller gradients and would turn the depth profile into a zig-zag.
    """
    out = []
    for name, m in model.named_modules():
        params = list(m.parameters(recurse=False))
        if params and (not weight_layers_only or any(p.ndim >= 2 for p in params)):
            out.append((name, m))
    return out


# Gradient-norm metrics sit under the training section, after train/ and away from val/ and test/.
GRAD_PREFIX = "train/grad_norm"


class GradientFlowMonitor(L.Callback):
    """Logs the gradient norm of every parameterised layer every N steps; plots them at the end.

    Norms falling by orders of magnitude from the last layers to the first is the vanishing
    gradient signal (e.g. deep plain nets with sigmoid/tanh). History goes to
    RUN_DIR/gradient_flow.jsonl (appended, so it survives a resume) and the plot to
    RUN_DIR/figures/gradient_flow.png.
    """

    def __init__(self, run_dir: str | Path, every_n_steps: int = 50, log_metrics: bool = True):
        self.run_dir = Path(run_dir)
        self.every = max(1, every_n_steps)
        self.log_metrics = log_metrics
        self.history_path = self.run_dir / "gradient_flow.jsonl"
        self.plot_path = self.run_dir / "figures" / "gradient_flow.png"
        self._layers: list[tuple[str, nn.Module]] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        # Grads are already all-reduced here, so rank 0 sees what every rank sees.
        if step % self.every != 0 or not trainer.is_global_zero:
            return
        if self._layers is None:
            self._layers = layer_order(pl_module.model if hasattr(pl_module, "model") else pl_module)
        names, norms = [], []
        for name, module in self._layers:
            grads = [p.grad.detach().float().norm() for p in module.parameters(recurse=False) if p.grad is not None]
            if grads:
                names.append(name)
                norms.append(torch.stack(grads).norm())
        if not norms:
            return
        values = torch.stack(norms).cpu().tolist()  # one device sync for all layers
        record = {"step": step, "layers": names, "norms": values}
        with self.history_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.log_metrics and trainer.logger is not None:
            # Three charts, not one per layer: MLflow sorts chart sections by name, and 22 per-layer charts
            # buried val/ and test/. The per-layer norms are in gradient_flow.jsonl and its figure.
            first, last = values[0], values[-1]
            metrics = {
                f"{GRAD_PREFIX}/first_layer": first,
                f"{GRAD_PREFIX}/last_layer": last,
                f"{GRAD_PREFIX}/first_over_last": first / last if last > 0 else float("nan"),
            }
            trainer.logger.log_metrics(metrics, step=step)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.plot()

    def plot(self) -> Path | None:
        if not self.history_path.is_file():
            return None
        records = [json.loads(line) for line in self.history_path.read_text().splitlines() if line.strip()]
        if not records:
            return None
        import matplotlib  # lazy: matplotlib loads at draw time, Agg chosen before pyplot

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")

        fig, ax = plt.subplots(figsize=(10, 4.5))
        cmap = plt.get_cmap("viridis")
        for i, r in enumerate(records):
            ax.plot(
                range(len(r["norms"])),
                r["norms"],
                color=cmap(i / max(1, len(records) - 1)),
                alpha=0.8,
                label=f"step {r['step']}" if i in (0, len(records) - 1) else None,
            )
        names = records[-1]["layers"]
        ax.set_yscale("log")
        ax.set_xlabel("layer (input -> output)")
        ax.set_ylabel("gradient L2 norm")
        ax.set_title("Gradient flow per layer (vanishing: norms fall towards the input)")
        ticks = range(0, len(names), max(1, len(names) // 20))
        ax.set_xticks(list(ticks), [names[t] for t in ticks], rotation=75, fontsize=6)
        ax.legend()
        fig.tight_layout()
        self.plot_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.plot_path, dpi=110)
        plt.close(fig)
        return self.plot_path


class NanGuard(L.Callback):
    """Stops training with a clear message when the loss or the gradients are NaN/inf.

    The check runs after the gradient all-reduce, so every DDP rank sees the same verdict and
    they all stop together (a NaN loss on one rank makes every rank's gradients NaN). Under
    16-mixed the GradScaler skips inf steps by design, so only the loss is checked there.

    The gradients are checked every `every_n_steps` steps: reading every gradient cost 2.5-3% of a
    ResNet-18 step on this CPU (bench/training.py), and a non-finite gradient that slips through makes
    the weights, then the loss, non-finite for good. The loss is checked every step where that is free
    (on the CPU); on a GPU it too waits for the next check, as reading it would sync the device.
    """

    def __init__(self, check_grads: bool = True, every_n_steps: int = 10):
        self.check_grads = check_grads
        self.every_n_steps = max(1, every_n_steps)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        loss = getattr(pl_module, "last_loss", None)
        due = step % self.every_n_steps == 0
        if loss is not None and (due or loss.device.type == "cpu") and not torch.isfinite(loss):
            self._fail(trainer, pl_module, loss, step, None)
        if self.check_grads and due:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                # One fused kernel for all norms and one device sync per step.
                total = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))
                if not torch.isfinite(total):
                    self._fail(trainer, pl_module, loss, step, total)

    def _fail(self, trainer, pl_module, loss, step: int, grad_norm) -> None:
        loss_v = float(loss) if loss is not None else math.nan
        if grad_norm is not None and math.isfinite(loss_v):
            culprit = _first_bad_param(pl_module)
            what = f"gradient norm is {float(grad_norm)} (first non-finite gradient: {culprit}; loss {loss_v})"
        else:
            what = f"train/loss is {loss_v}"
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        raise TrainingDiverged(
            f"training diverged at global step {step} (epoch {trainer.current_epoch}): {what}; "
            f"lr was {lr}. Lower optim.lr, add warmup (optim.warmup_epochs) or gradient clipping "
            f"(trainer.gradient_clip_val)."
        )


def _first_bad_param(module: nn.Module) -> str:
    for name, p in module.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return "?"


class ReporterCallback(L.Callback):
    """Passes each finished epoch's metrics to the job's reporter (rank 0 only)."""

    def __init__(self, reporter: Any):
        self.reporter = reporter

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        self.reporter.epoch(trainer.current_epoch, metrics)


HISTORY_FILE = "history.json"


class EpochHistory(L.Callback):
    """One row per epoch on rank 0: {epoch (1-based), train_loss, val_loss, val_acc1, val_acc5, lr[, lr_body]}.

    Lightning validates before the training epoch ends, so the validation part of a row is taken at
    validation end and the training loss at train-epoch end; the complete row then goes to the reporter.
    Rows are kept in RUN_DIR/history.json (rewritten each epoch, keyed by epoch) and in the checkpoint,
    so a resumed run's history is complete and a re-done epoch replaces its old row.
    """

    def __init__(self, run_dir: str | Path, reporter: Any | None = None):
        self.path = Path(run_dir) / HISTORY_FILE
        self.reporter = reporter
        self.rows: dict[int, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.rows = {int(r["epoch"]): r for r in json.loads(self.path.read_text())}
            except (ValueError, KeyError, TypeError):
                log.warning("%s: unreadable history, starting a new one", self.path)

    @property
    def history(self) -> list[dict[str, Any]]:
        return [self.rows[e] for e in sorted(self.rows)]

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for row in state_dict.get("history", []):
            self.rows.setdefault(int(row["epoch"]), row)  # the file is at least as new as the checkpoint

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = _scalars(trainer.callback_metrics)
        row = self._row(trainer)
        row.update(val_loss=m.get("val/loss"), val_acc1=m.get("val/acc1"), val_acc5=m.get("val/acc5"))
        # every other validation metric too (detection: val_map, val_map_50, val_fitness, ...)
        row.update({k.replace("/", "_"): v for k, v in m.items() if k.startswith("val/")})
        self._save()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        m = _scalars(trainer.callback_metrics)
        row = self._row(trainer)
        row.update(train_loss=m.get("train/loss"), train_acc1=m.get("train/acc1"))
        row.update(
            {
                k.replace("/", "_"): v
                for k, v in m.items()
                if k.startswith("train/") and k not in ("train/lr", "train/input_size")
            }
        )
        # Metrics a module logs in its own on_validation_epoch_end (detection mAP) arrive after the
        # callbacks' hook above; by the end of the training epoch they are there.
        if not trainer.sanity_checking and any(k.startswith("val/") for k in m):
            row.update({k.replace("/", "_"): v for k, v in m.items() if k.startswith("val/")})
        self._save()
        if self.reporter is not None:  # with the planned epochs, so a console can show "epoch 3/20"
            self.reporter.epoch(row["epoch"], {**row, "max_epochs": trainer.max_epochs})

    def _row(self, trainer) -> dict[str, Any]:
        epoch = trainer.current_epoch + 1
        row = self.rows.setdefault(
            epoch,
            {"epoch": epoch, "train_loss": None, "val_loss": None, "val_acc1": None, "val_acc5": None, "lr": None},
        )
        if trainer.optimizers:
            groups = trainer.optimizers[0].param_groups
            row["lr"] = float(groups[0]["lr"])
            body = [g["lr"] for g in groups if g.get("body")]
            if body:
                row["lr_body"] = float(body[0])
        row["global_step"] = trainer.global_step
        return row

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.history, indent=1))
        tmp.replace(self.path)


class TimeBudget(L.Callback):
    """With trainer.max_time, fit the LR schedule to the time: after every epoch the pace of that epoch
    (steps per second, validation included; the first epoch's start-up is not the pace of the rest)
    gives the steps that fit in what is left of the budget, and the schedule's plan (optim.StepPlan) is
    set to them, so the cosine reaches its floor when the time runs out (as Ultralytics' `time=`
    re-plans its epochs). It never plans past max_epochs. Lightning's own Timer stops the run."""

    def __init__(self) -> None:
        self.planned_total: int | None = None  # kept in checkpoints: a resumed run keeps its plan
        self._ceiling: int | None = None  # the plan of max_epochs, before any re-planning
        self._last: tuple[int, float] = (0, 0.0)  # (global step, seconds elapsed) at the last epoch end

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan = getattr(pl_module, "step_plan", None)
        if plan is None:
            return
        self._ceiling = plan.total
        if self.planned_total is not None:
            plan.total = self.planned_total
        timer = _timer(trainer)
        self._last = (trainer.global_step, timer.time_elapsed("train") if timer else 0.0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan, timer = getattr(pl_module, "step_plan", None), _timer(trainer)
        if plan is None or timer is None or self._ceiling is None:
            return
        elapsed, left = timer.time_elapsed("train"), timer.time_remaining("train")
        steps = trainer.global_step
        done, spent = steps - self._last[0], elapsed - self._last[1]
        self._last = (steps, elapsed)
        if done <= 0 or spent <= 0 or left is None:
            return
        fits = steps + int(left * done / spent)
        plan.total = self.planned_total = max(steps + 1, min(self._ceiling, fits))
        log.info(
            "time budget: %.0f s left at %.2f steps/s: the schedule now ends at step %d", left, done / spent, plan.total
        )

    def state_dict(self) -> dict[str, Any]:
        return {"planned_total": self.planned_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_total = state_dict.get("planned_total")


def _timer(trainer: L.Trainer) -> Timer | None:
    """Lightning's Timer callback, which Trainer(max_time=...) adds."""
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}


def checkpoint_callbacks(
    run_dir: str | Path, every_n_steps: int, monitor: str = "val/loss", mode: str = "min"
) -> list[L.Callback]:
    """Best-by-`monitor` and last.ckpt, both in the fixed folder RUN_DIR/checkpoints.

    A fixed folder matters: resuming looks for last.ckpt there, whatever the MLflow run id.
    last.ckpt is rewritten every N steps (a kill mid-epoch loses at most N steps) and after
    each validation (by the best-checkpoint callback).
    """
    folder = Path(run_dir) / "checkpoints"
    best = ModelCheckpoint(
        dirpath=folder,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    periodic = ModelCheckpoint(
        dirpath=folder,
        filename="periodic",
        save_top_k=0,
        save_last=True,
        every_n_train_steps=every_n_steps,
        enable_version_counter=False,
    )
    return [best, periodic]


def standard_callbacks(
    run_dir: str | Path,
    *,
    checkpoint_every_n_steps: int,
    early_stopping_patience: int | None,
    grad_monitor_every_n_steps: int,
    nan_guard: bool,
    check_grads: bool,
    nan_check_every_n_steps: int = 10,
    reporter: Any | None = None,
    history: bool = True,
    monitor: str = "val/loss",
    mode: str = "min",
    time_budget: bool = False,
) -> list[L.Callback]:
    cbs: list[L.Callback] = checkpoint_callbacks(run_dir, checkpoint_every_n_steps, monitor, mode)
    if time_budget:
        cbs.append(TimeBudget())
    cbs.append(LearningRateMonitor(logging_interval="step"))
    cbs.append(DataWait())
    if early_stopping_patience:
        cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=early_stopping_patience))
    if grad_monitor_every_n_steps:
        cbs.append(GradientFlowMonitor(run_dir, grad_monitor_every_n_steps))
    if nan_guard:
        cbs.append(NanGuard(check_grads=check_grads, every_n_steps=nan_check_every_n_steps))
    if history:
        cbs.append(EpochHistory(run_dir, reporter))  # it also passes each epoch to the reporter
    elif reporter is not None:
        cbs.append(ReporterCallback(reporter))
    return cbs
