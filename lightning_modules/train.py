"""The classification training job.

    python -m lightning_modules.train CONFIG [OVERLAY ...] --data PREPARED_DIR --out RUN_DIR
        [--set key=value ...] [--resume] [--tune]

RUN_DIR holds everything of one run: config.yaml, checkpoints/ (last.ckpt, best.ckpt),
mlflow_run_id, figures/, result.json. Rerunning the same command:
- after a crash or kill: resumes from checkpoints/last.ckpt into the same MLflow run;
- after it finished (result.json): does nothing and reports the stored result;
- with a different config or data: refuses (ConfigError) and asks for a new --out.

Distributed: under torchrun each rank runs this module; Lightning sees torchrun's environment
and launches nothing (devices = LOCAL_WORLD_SIZE, num_nodes = WORLD_SIZE / LOCAL_WORLD_SIZE).
`trainer.devices > 1` without torchrun re-runs this command under
`torchrun --standalone --nproc-per-node N` as a child process; Lightning's own
re-launching of the program is never used (inside Dagster it would re-run Dagster).
Only global rank 0 writes RUN_DIR files and talks to MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lightning_modules import reporting
from lightning_modules.config import JobConfig, flatten, load_config
from lightning_modules.contract import RESULT_FILE, JobResult, summary
from lightning_modules.data.lineage import prepared_version
from lightning_modules.errors import ConfigError, DataError, VisionflowError
from lightning_modules.reporting.progress import log_to_stderr
from lightning_modules.tracking import ensure_store, resolve_uri
from lightning_modules.training import distributed as dist
from lightning_modules.training.preflight import check_names, check_trains
from lightning_modules.training.run_folder import check_same_job, record_job, run_state
from lightning_modules.training.tasks import get_task
from lightning_modules.training.tune import tune

log = logging.getLogger("visionflow")

# True once this process started the job's ranks under torchrun: they report, this process must not.
_children_report = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "config", nargs="+", type=Path, help="job YAML; later files overlay earlier ones (e.g. RUN_DIR/tuned.yaml)"
    )
    p.add_argument(
        "--data", required=True, type=Path, help="prepared classification folder (manifest.json, train/, val/)"
    )
    p.add_argument("--out", required=True, type=Path, help="run folder (RUN_DIR)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=0.05")
    p.add_argument("--resume", action="store_true", help="fail unless RUN_DIR holds an unfinished run to resume")
    p.add_argument(
        "--tune", action="store_true", help="first find batch size and LR on one device (RUN_DIR/tuned.yaml)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        result = run(args)
    except BaseException as exc:
        # Rank 0 tells its launcher (Pipes: the error shows in Dagster); the process still fails.
        if not _children_report:
            reporting.fail_open_reporters(exc, args.out)
        if not isinstance(exc, VisionflowError):
            raise
        log.error("%s", exc)
        if dist.global_rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        reporting.close_open_reporters()
    if isinstance(result, int):
        return result
    if dist.is_global_zero() and result:
        print(json.dumps(summary(result)))
    return 0


def run(args: argparse.Namespace) -> JobResult | int:
    """Run (or resume, or report) the job described by the parsed arguments."""
    cfg = load_config(args.config, args.set)
    check_names(cfg, _sources(args))
    get_task(cfg.task).check_data(args.data)  # DataError naming the path, before any rank starts
    run_dir = args.out.resolve()
    world = dist.world_info()
    if args.tune and world.torchrun:
        raise ConfigError(
            "--tune runs on one device: start the job without torchrun (it tunes, then launches torchrun)"
        )
    if args.tune and (run_dir / "tuned.yaml").is_file():
        cfg = _apply_tuned(args, run_dir)  # tuned before: reuse, so a rerun is the same job
    state = run_state(run_dir)
    if state == "finished" or state == "unfinished":
        check_same_job(run_dir, cfg, args.data)
    if args.resume and state != "unfinished":
        raise DataError(run_dir, f"--resume: nothing to resume here (run is {state})")
    if state == "finished":
        result = json.loads((run_dir / RESULT_FILE).read_text())
        log.info("%s already finished (result.json): nothing to do; use a new --out to train again", run_dir)
        reporter = reporting.make_reporter(run_dir)
        reporter.finish(result)
        reporter.close()
        return result

    if not world.torchrun:
        if cfg.trainer.num_nodes > 1:
            raise ConfigError(
                f"{_sources(args)}: trainer.num_nodes={cfg.trainer.num_nodes} needs one torchrun per node "
                "(torchrun --nnodes N --node-rank I --master-addr HOST --nproc-per-node D "
                "-m lightning_modules.train ...)"
            )
        if args.tune:
            tune(cfg, args.data, run_dir)
            cfg = _apply_tuned(args, run_dir)
        if cfg.trainer.devices > 1:
            return relaunch_under_torchrun(args, cfg)
    return fit(cfg, args.data, run_dir, world, sources=_sources(args))


def _apply_tuned(args: argparse.Namespace, run_dir: Path) -> JobConfig:
    """Add RUN_DIR/tuned.yaml's values as the last overrides (after --set); a re-launch carries them."""
    tuned = flatten(yaml.safe_load((run_dir / "tuned.yaml").read_text()) or {})
    args.set = [*args.set, *(f"{k}={v}" for k, v in tuned.items())]
    args.tune = False
    return load_config(args.config, args.set)


def relaunch_under_torchrun(args: argparse.Namespace, cfg: JobConfig) -> int:
    """Run this same command as `torchrun --standalone --nproc-per-node N` (a child process)."""
    if not cfg.trainer.fast_dev_run:
        ensure_store(resolve_uri(cfg.tracking.tracking_uri))  # before ranks race on a fresh schema
    argv = [str(c) for c in args.config] + ["--data", str(args.data), "--out", str(args.out)]
    for item in args.set:
        argv += ["--set", item]
    if args.resume:
        argv.append("--resume")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={cfg.trainer.devices}",
        "-m",
        "lightning_modules.train",
        *argv,
    ]
    log.info("starting %d ranks: %s", cfg.trainer.devices, " ".join(cmd))
    global _children_report
    _children_report = True
    return subprocess.run(cmd, env=os.environ.copy()).returncode


def fit(cfg: JobConfig, data_dir: Path, run_dir: Path, world: dist.WorldInfo, *, sources: str = "") -> JobResult:
    """Train in this process (one rank of the job): build -> fit -> report. Returns the result on rank 0."""
    # Imported here, not at the top: `--help` and the parent that relaunches under torchrun stay torch-free.
    import pytorch_lightning as L  # lazy: Lightning (see above)

    from lightning_modules.search.pruning import pruning_callbacks  # lazy: the search package, only for training
    from lightning_modules.tracking.loggers import extra_loggers, finish_loggers  # lazy: Lightning (see above)
    from lightning_modules.training.callbacks import standard_callbacks  # lazy: Lightning (see above)
    from lightning_modules.training.checkpoints import resume_checkpoint  # lazy: torch (see above)
    from lightning_modules.training.mlflow_run import MlflowRun  # lazy: Lightning (see above)
    from lightning_modules.training.result import job_result  # lazy: Lightning (see above)
    from lightning_modules.training.trainer import (  # lazy: Lightning (see above)
        build_trainer,
        ddp_compression,
        quiet_known_warnings,
    )

    quiet_known_warnings()
    t, rank0, fast = cfg.trainer, dist.is_global_zero(), bool(cfg.trainer.fast_dev_run)
    devices, num_nodes = (world.local_world_size, world.num_nodes) if world.torchrun else (1, 1)
    threads = dist.set_threads(devices if world.torchrun else 1)
    effective = dist.effective_batch(cfg.data.batch_size, devices, num_nodes, t.accumulate_grad_batches)
    lr = dist.scaled_lr(cfg.optim.lr, effective, cfg.optim.reference_batch)
    L.seed_everything(t.seed, workers=True, verbose=False)

    # build
    task = get_task(cfg.task)
    built = task.build(cfg, data_dir, lr)
    check_trains(task, built, cfg, data_dir, devices * num_nodes)
    data_version = prepared_version(data_dir)  # what the prep recorded, never a guess from the repo
    extra = {
        "effective_batch": effective,
        "lr_effective": lr,
        "devices": devices,
        "num_nodes": num_nodes,
        "world_size": devices * num_nodes,
        "threads_per_rank": threads,
        # what the gradients' all-reduce really sends ("auto" resolved; none without DDP)
        "ddp_compression": ddp_compression(t.ddp_compression, t.accelerator) if devices * num_nodes > 1 else "none",
        **built.extra,
    }
    if rank0 and not fast:
        record_job(run_dir, cfg, data_dir, data_version, sources)
    mlflow = MlflowRun(cfg, run_dir, data_dir, data_version, extra, active=rank0 and not fast)
    reporter = reporting.make_reporter(run_dir) if not fast else reporting.NullReporter()
    if mlflow.run_id:
        reporter.start({"run_dir": str(run_dir), "mlflow_run_id": mlflow.run_id, **extra})
        log.info(
            "run %s: MLflow run %s (%s), effective batch %d, lr %.4g, %d device(s) x %d node(s)",
            run_dir,
            mlflow.run_id,
            "new" if mlflow.created else "resumed",
            effective,
            lr,
            devices,
            num_nodes,
        )
    callbacks = standard_callbacks(
        run_dir,
        checkpoint_every_n_steps=t.checkpoint_every_n_steps,
        early_stopping_patience=t.early_stopping_patience,
        grad_monitor_every_n_steps=t.grad_monitor_every_n_steps if not fast else 0,
        nan_guard=t.nan_guard,
        check_grads=t.precision != "16-mixed",
        nan_check_every_n_steps=t.nan_check_every_n_steps,
        reporter=reporter,
        history=not fast,
        monitor=task.monitor,
        mode=task.mode,
        time_budget=bool(t.max_time),
    )
    # task callbacks; a search trial's pruning (report val loss, stop when pruned); the MLflow run
    callbacks += [*task.callbacks(cfg), *pruning_callbacks(run_dir), mlflow]
    # W&B beside MLflow (tracking.loggers), from rank 0 only, as MLflow
    others = extra_loggers(cfg, run_dir, cfg.tracking.run_name or run_dir.name, mlflow.params) if mlflow.run_id else []
    trainer = build_trainer(
        cfg,
        world,
        devices=devices,
        num_nodes=num_nodes,
        run_dir=run_dir,
        callbacks=callbacks,
        logger=[mlflow.logger, *others] if others else mlflow.logger,
        distributed_sampler=task.distributed_sampler,
    )

    # fit (from the last good checkpoint of this run folder, if any)
    resume = None if fast else resume_checkpoint(run_dir / "checkpoints", rank0=rank0)
    if resume and rank0:
        log.info("resuming from %s", resume)
    start = time.monotonic()
    # weights_only: resuming never unpickles code, whoever wrote the file
    try:
        trainer.fit(
            built.module, datamodule=built.datamodule, ckpt_path=str(resume) if resume else None, weights_only=True
        )
    finally:
        finish_loggers(others)
    seconds = time.monotonic() - start
    if trainer.global_step == 0 and not fast:
        raise DataError(
            data_dir,
            "the job finished without a single training step (no training batch was "
            "produced: check trainer.limit_train_batches, data.batch_size and the train split)",
        )

    # report (rank 0)
    if not rank0:
        return {}  # type: ignore[typeddict-item]
    if fast:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        return {
            "status": "fast_dev_run",
            "run_dir": str(run_dir),
            "metrics": metrics,  # type: ignore[typeddict-item]
            "global_step": trainer.global_step,
        }
    result = job_result(trainer, cfg, task, run_dir, mlflow, data_version=data_version, seconds=seconds, extra=extra)
    mlflow.finish(result, built.module, built.datamodule)
    reporter.finish(result)
    reporter.close()
    return result


def _sources(args: argparse.Namespace) -> str:
    return ", ".join(str(c) for c in args.config) + (" + --set" if args.set else "")


def _setup_logging() -> None:
    log_to_stderr("%(asctime)s %(levelname)s [rank %(rank)s] %(message)s", _RankFilter())


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = dist.global_rank()
        return True


if __name__ == "__main__":
    sys.exit(main())
