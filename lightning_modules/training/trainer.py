"""The Lightning Trainer of a job: devices from torchrun's world, DDP when there are ranks, atomic
checkpoints, ranks from torchrun (never Slurm's), and a logger that is silent off rank 0."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.plugins.environments import ClusterEnvironment, LightningEnvironment, TorchElasticEnvironment
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from lightning_modules.config import JobConfig
from lightning_modules.training import distributed as dist
from lightning_modules.training.checkpoints import atomic_checkpoint_io


def quiet_known_warnings() -> None:
    # Expected here, not actionable: litdata datasets have a per-rank __len__; the module (not the
    # datamodule) owns on_after_batch_transfer on purpose; a Lightning-internal deprecation.
    for pattern in (
        ".*IterableDataset.*__len__.*",
        ".*overridden `on_after_batch_transfer`.*",
        ".*LeafSpec.*",
        ".*smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def build_trainer(
    cfg: JobConfig,
    world: dist.WorldInfo,
    *,
    devices: int,
    num_nodes: int,
    run_dir: Path,
    callbacks: list[L.Callback],
    logger: Logger,
    distributed_sampler: bool,
) -> L.Trainer:
    t = cfg.trainer
    fast = bool(t.fast_dev_run)
    return L.Trainer(
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy(
            world,
            find_unused=cfg.optim.freeze_body_epochs > 0,
            compression=ddp_compression(t.ddp_compression, t.accelerator),
        ),
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_time=t.max_time,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        fast_dev_run=fast,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(run_dir),
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=dist.is_global_zero() and not fast,
        use_distributed_sampler=distributed_sampler,
        plugins=[atomic_checkpoint_io(), cluster_environment(world)],
    )


def cluster_environment(world: dist.WorldInfo) -> ClusterEnvironment:
    """Ranks come from torchrun, always, also inside a Slurm allocation (the Slurm deployment runs torchrun
    under `srun`, one task per node). Lightning's SLURMEnvironment would read SLURM_PROCID, the same for
    every rank torchrun starts on a node, and its auto-detection order has changed between releases: so
    the environment is chosen here, never detected."""
    return TorchElasticEnvironment() if world.torchrun else LightningEnvironment()


def ddp_compression(setting: str, accelerator: str) -> str:
    """trainer.ddp_compression as the job runs it. "auto" is bf16 on CPU ranks: gloo moves the bytes with
    the same cores that compute, and a bf16 all-reduce learned the same (bench/ddp_compression.py); on
    CUDA it is none, NCCL's links are fast and the casts would cost more than they save."""
    if setting != "auto":
        return setting
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "none" if on_cuda else "bf16"


COMM_HOOKS = {"none": None, "fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}


def strategy(world: dist.WorldInfo, *, find_unused: bool, compression: str = "none") -> Any:
    """DDP across ranks. A job that freezes the body needs find_unused_parameters: the frozen
    parameters stay registered with DDP (so their gradients are all-reduced once unfrozen) but
    get no gradient while frozen. `compression` (trainer.ddp_compression) sends the gradients as
    16-bit floats (PyTorch's fp16/bf16 compress hooks): half the bytes, rounded gradients."""
    if world.world_size <= 1:
        return "auto"
    # gradient_as_bucket_view: the gradients live in DDP's all-reduce buckets, saving one copy of every
    # gradient into and out of the buckets each step (PyTorch's DDP notes).
    return CommHookDDPStrategy(
        comm_hook=COMM_HOOKS[compression], find_unused_parameters=find_unused, gradient_as_bucket_view=True
    )


class CommHookDDPStrategy(DDPStrategy):
    """DDP with a communication hook on every device. Lightning's own `ddp_comm_hook` argument is
    registered on CUDA only (DDPStrategy._register_ddp_hooks) and silently dropped on CPU ranks,
    although PyTorch runs the same hooks over gloo: here DDP's public `register_comm_hook` is
    called once the model is wrapped, whatever the device."""

    def __init__(self, *, comm_hook: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.comm_hook = comm_hook

    def configure_ddp(self) -> None:
        super().configure_ddp()
        if self.comm_hook is not None:
            self.model.register_comm_hook(state=None, hook=self.comm_hook)  # type: ignore[union-attr, operator]


class SilentLogger(Logger):
    """Logs nothing: for ranks other than 0 and for fast_dev_run (the LR monitor needs a logger)."""

    @property
    def name(self) -> str:
        return "silent"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass
