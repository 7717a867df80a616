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
from typing import Any

from lightning_modules import distributed as dist
from lightning_modules.config import JobConfig, diff, dump_yaml, flatten, load_config, to_dict
from lightning_modules.contract import RESULT_FILE, JobResult, summary
from lightning_modules.data.lineage import data_identity
from lightning_modules.errors import ConfigError, DataError, VisionflowError

log = logging.getLogger("visionflow")

CONFIG_FILE = "config.yaml"
JOB_FILE = "job.json"
# Fields that may differ between attempts of one run without changing what it computes
# (tracking.tags.* too: a Dagster retry carries another Dagster run id).
_RERUN_FREE = {"data.num_workers", "trainer.devices", "tracking.run_id"}
_RERUN_FREE_PREFIXES = ("tracking.tags.",)
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
            dist.fail_open_reporters(exc, args.out)
        if not isinstance(exc, VisionflowError):
            raise
        log.error("%s", exc)
        if dist.global_rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.close_open_reporters()
    if isinstance(result, int):
        return result
    if dist.is_global_zero() and result:
        print(json.dumps(summary(result)))
    return 0


def run(args: argparse.Namespace) -> JobResult | int:
    """Run (or resume, or report) the job described by the parsed arguments."""
    cfg = load_config(args.config, args.set)
    check_names(cfg, _sources(args))
    from lightning_modules.tasks import get_task

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
        reporter = dist.make_reporter(run_dir)
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
            from lightning_modules.tune import tune

            tune(cfg, args.data, run_dir)
            cfg = _apply_tuned(args, run_dir)
        if cfg.trainer.devices > 1:
            return relaunch_under_torchrun(args, cfg)
    return fit(cfg, args.data, run_dir, world, sources=_sources(args))


def check_names(cfg: JobConfig, source: str) -> None:
    """Names picked from registries (model, activation, loss): a typo names the file and field."""
    from lightning_modules.losses import LOSS_REGISTRY
    from lightning_modules.models import ACTIVATIONS, MODEL_REGISTRY

    checks = [
        ("model.name", cfg.model.name, MODEL_REGISTRY),
        ("model.activation", cfg.model.activation, {"default": None, **ACTIVATIONS}),
        ("loss.name", cfg.loss.name, LOSS_REGISTRY),
    ]
    if cfg.task == "detection":
        from lightning_modules.detection.models import DETECTORS

        checks.append(("detection.version", cfg.detection.version, DETECTORS))
    for key, value, registry in checks:
        if value not in registry:
            raise ConfigError(f"{source}: {key}={value!r} is unknown; choose one of: {', '.join(registry)}")


def _apply_tuned(args: argparse.Namespace, run_dir: Path) -> JobConfig:
    """Add RUN_DIR/tuned.yaml's values as the last overrides (after --set); a re-launch carries them."""
    import yaml

    tuned = flatten(yaml.safe_load((run_dir / "tuned.yaml").read_text()) or {})
    args.set = [*args.set, *(f"{k}={v}" for k, v in tuned.items())]
    args.tune = False
    return load_config(args.config, args.set)


def run_state(run_dir: Path) -> str:
    """ "new", "unfinished" (config.yaml but no finished result) or "finished"."""
    result = run_dir / RESULT_FILE
    if result.is_file():
        try:
            if json.loads(result.read_text()).get("status") == "finished":
                return "finished"
        except json.JSONDecodeError:
            pass
    return "unfinished" if (run_dir / CONFIG_FILE).is_file() else "new"


def check_same_job(run_dir: Path, cfg: JobConfig, data: Path) -> None:
    """A run folder belongs to one config and one dataset; anything else needs a new --out."""
    import yaml

    stored = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    changed = [k for k in diff(stored, to_dict(cfg)) if k not in _RERUN_FREE and not k.startswith(_RERUN_FREE_PREFIXES)]
    if changed:
        raise ConfigError(
            f"{run_dir / CONFIG_FILE}: this run folder was started with a different config "
            f"({', '.join(changed)} differ); use a new --out to train with it"
        )
    job_file = run_dir / JOB_FILE
    if job_file.is_file():
        job = json.loads(job_file.read_text())
        old = job.get("data")
        if old and Path(old) != data.resolve():
            raise ConfigError(f"{job_file}: this run folder trained on {old}, not {data.resolve()}; use a new --out")
        # Same path, other content (the set was prepared again from other data): a new job, not this one.
        then, now = job.get("data_fingerprint"), data_identity(data)
        if then != now:
            raise ConfigError(
                f"{job_file}: this run folder trained on {old or data} as it was then (data "
                f"{then or 'of unknown content'}); the set there now is {now or 'of unknown content'}: "
                "use a new --out to train on it"
            )


def check_trains(task, built, cfg: JobConfig, data_dir: Path, world_size: int) -> None:
    """A job whose training set makes no full batch would "finish" after zero steps: say so instead."""
    n, n_val = built.extra.get("train_samples"), built.extra.get("val_samples")
    if not n or cfg.trainer.fast_dev_run:
        return
    batch = cfg.data.batch_size
    if task.train_batches(n, batch, world_size) < 1:
        per_rank = n // world_size
        raise DataError(
            data_dir,
            f"{n} training images over {world_size} rank(s) ({per_rank} per rank) make no full "
            f"batch of data.batch_size={batch}, and partial batches are dropped: the job would "
            f"train zero steps. Use data.batch_size <= {max(1, per_rank)}, fewer ranks, or more data",
        )
    if n_val is not None and n_val < world_size:
        raise DataError(
            data_dir,
            f"{n_val} validation images cannot give each of {world_size} ranks one: use fewer "
            "ranks or more validation data",
        )


def relaunch_under_torchrun(args: argparse.Namespace, cfg: JobConfig) -> int:
    """Run this same command as `torchrun --standalone --nproc-per-node N` (a child process)."""
    from lightning_modules.tracking import ensure_store, resolve_uri

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


def _quiet_known_warnings() -> None:
    import warnings

    # Expected here, not actionable: litdata datasets have a per-rank __len__; the module (not the
    # datamodule) owns on_after_batch_transfer on purpose; a Lightning-internal deprecation.
    for pattern in (
        ".*IterableDataset.*__len__.*",
        ".*overridden `on_after_batch_transfer`.*",
        ".*LeafSpec.*",
        ".*smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def fit(cfg: JobConfig, data_dir: Path, run_dir: Path, world: dist.WorldInfo, *, sources: str = "") -> JobResult:
    """Train in this process (one rank of the job). Returns the result dict on rank 0."""
    import pytorch_lightning as L

    _quiet_known_warnings()

    from lightning_modules import tracking
    from lightning_modules.callbacks import EpochHistory, standard_callbacks
    from lightning_modules.checkpoints import LAST, atomic_checkpoint_io, resume_checkpoint
    from lightning_modules.tasks import get_task

    t = cfg.trainer
    if world.torchrun:
        devices, num_nodes = world.local_world_size, world.num_nodes
    else:
        devices, num_nodes = 1, 1
    threads = dist.set_threads(devices if world.torchrun else 1)
    effective = dist.effective_batch(cfg.data.batch_size, devices, num_nodes, t.accumulate_grad_batches)
    lr = dist.scaled_lr(cfg.optim.lr, effective, cfg.optim.reference_batch)
    rank0 = dist.is_global_zero()
    fast = bool(t.fast_dev_run)
    L.seed_everything(t.seed, workers=True, verbose=False)

    task = get_task(cfg.task)
    built = task.build(cfg, data_dir, lr)
    dm, module = built.datamodule, built.module
    reporter = dist.make_reporter(run_dir) if not fast else dist.NullReporter()
    freezes = cfg.optim.freeze_body_epochs > 0
    uri = tracking.resolve_uri(cfg.tracking.tracking_uri)
    run_id = None
    logger: Any = SilentLogger()
    extra = {
        "effective_batch": effective,
        "lr_effective": lr,
        "devices": devices,
        "num_nodes": num_nodes,
        "world_size": devices * num_nodes,
        "threads_per_rank": threads,
        **built.extra,
    }
    from lightning_modules.data.lineage import prepared_version

    data_version = prepared_version(data_dir)  # what the prep recorded, never a guess from the repo
    check_trains(task, built, cfg, data_dir, devices * num_nodes)
    if rank0 and not fast:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_once(run_dir / CONFIG_FILE, dump_yaml(cfg))
        _write_once(
            run_dir / JOB_FILE,
            json.dumps(
                {
                    "data": str(data_dir.resolve()),
                    "data_version": data_version,
                    "data_fingerprint": data_identity(data_dir),
                    "config_sources": sources,
                },
                indent=2,
            ),
        )
        tracking.ensure_store(uri)
        tags = {
            **cfg.tracking.tags,
            "git_sha": tracking.git_sha(),
            "data_version": data_version,
            "data_dir": str(data_dir.resolve()),
            "run_dir": str(run_dir),
            "model": cfg.model.name,
            "init": _init_kind(cfg),
            "task": cfg.task,
        }
        run_id, created = tracking.open_run(
            uri, cfg.tracking.experiment, run_dir, cfg.tracking.run_name, tags, run_id=cfg.tracking.run_id
        )
        # A run handed over (tracking.run_id) is not "created" here but still needs the job's params.
        if created or not tracking.run_info_logged(uri, run_id):
            params = {**flatten(to_dict(cfg)), **extra}
            tracking.log_run_info(uri, run_id, params=params, tags=tags, config_yaml=dump_yaml(cfg))
            for extra_file in ("tuned.yaml", "figures/lr_find.png"):
                if (run_dir / extra_file).is_file():
                    tracking.log_artifact(uri, run_id, run_dir / extra_file, "tuning")
        logger = tracking.make_logger(uri, cfg.tracking.experiment, run_id)
        reporter.start({"run_dir": str(run_dir), "mlflow_run_id": run_id, **extra})
        log.info(
            "run %s: MLflow run %s (%s), effective batch %d, lr %.4g, %d device(s) x %d node(s)",
            run_dir,
            run_id,
            "new" if created else "resumed",
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
        reporter=reporter,
        history=not fast,
        monitor=task.monitor,
        mode=task.mode,
    )
    callbacks += task.callbacks(cfg)
    from lightning_modules.pruning import pruning_callbacks

    callbacks += pruning_callbacks(run_dir)  # a search trial: report val loss, stop when pruned
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(world, find_unused=freezes),
        precision=t.precision,
        max_epochs=t.max_epochs,
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
        enable_model_summary=rank0 and not fast,
        use_distributed_sampler=task.distributed_sampler,
        plugins=[atomic_checkpoint_io()],
    )
    last = run_dir / "checkpoints" / LAST
    resume = None if fast else resume_checkpoint(last.parent, rank0=rank0)
    ckpt_path = str(resume) if resume else None
    if ckpt_path and rank0:
        log.info("resuming from %s", ckpt_path)
    start = time.monotonic()
    try:
        # weights_only: resuming never unpickles code, whoever wrote the file
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except VisionflowError as exc:
        if run_id:
            tracking.set_tag(uri, run_id, "error", str(exc))
        raise
    seconds = time.monotonic() - start
    if trainer.global_step == 0 and not fast:
        raise DataError(
            data_dir,
            "the job finished without a single training step (no training batch was "
            "produced: check trainer.limit_train_batches, data.batch_size and the train split)",
        )
    if not rank0:
        return {}
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if fast:
        return {
            "status": "fast_dev_run",
            "run_dir": str(run_dir),
            "metrics": metrics,
            "global_step": trainer.global_step,
        }
    best_cb = next(c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None) == task.monitor)
    best_score = float(best_cb.best_model_score) if best_cb.best_model_score is not None else None
    best_path = best_cb.best_model_path or None
    history_cb = next((c for c in trainer.callbacks if isinstance(c, EpochHistory)), None)
    result: JobResult = {
        "status": "finished",
        "run_dir": str(run_dir),
        "tracking_uri": uri,
        "experiment": tracking.experiment_name(uri, run_id) if run_id else cfg.tracking.experiment,
        "mlflow_run_id": run_id,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "stopped_early": trainer.current_epoch < t.max_epochs,
        "best_checkpoint": best_path,
        "task": cfg.task,
        "monitor": task.monitor,
        "monitor_mode": task.mode,
        "best_score": best_score,
        "best_val_loss": best_score if task.monitor == "val/loss" else _best_row_value(history_cb, "val_loss", task),
        "last_checkpoint": str(last) if last.is_file() else None,
        "metrics": metrics,
        "fit_seconds_this_attempt": round(seconds, 2),
        "data_version": data_version,
        "init": _init_kind(cfg),
        "history": history_cb.history if history_cb is not None else [],
        **extra,
    }
    _finish_tracking(uri, run_id, cfg, run_dir, module, dm, result, trainer)
    reporter.finish(result)
    reporter.close()
    return result


def _best_row_value(history_cb, key: str, task) -> float | None:
    """`key` in the epoch whose monitored metric was best (what the best checkpoint holds)."""
    rows = [r for r in (history_cb.history if history_cb else []) if r.get(monitor_key(task)) is not None]
    if not rows:
        return None
    pick = min if task.mode == "min" else max
    return pick(rows, key=lambda r: r[monitor_key(task)]).get(key)


def monitor_key(task) -> str:
    """The history-row key of a logged metric: "val/fitness" -> "val_fitness"."""
    return task.monitor.replace("/", "_")


def _strategy(world: dist.WorldInfo, *, find_unused: bool):
    """DDP across ranks. A job that freezes the body needs find_unused_parameters: the frozen
    parameters stay registered with DDP (so their gradients are all-reduced once unfrozen) but
    get no gradient while frozen."""
    if world.world_size <= 1:
        return "auto"
    if not find_unused:
        return "ddp"
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=True)


def _init_kind(cfg: JobConfig) -> str:
    if cfg.model.pretrained_checkpoint:
        return "pretrained"
    return "torchvision" if cfg.model.torchvision_weights else "scratch"


def _finish_tracking(uri, run_id, cfg, run_dir, module, dm, result, trainer) -> None:
    """Figures, the best checkpoint and summary metrics into the MLflow run (rank 0)."""
    from lightning_modules import tracking

    figures = run_dir / "figures"
    made = []
    if getattr(module, "last_confusion", None) is not None:
        made.append(
            tracking.confusion_figure(module.last_confusion.numpy(), dm.class_names, figures / "confusion_matrix.png")
        )
    if hasattr(module, "final_figures"):  # detection: PR curves, confusion matrix, drawn samples
        paths, numbers = module.final_figures(dm, figures)
        made += paths
        tracking.log_metrics(uri, run_id, numbers, step=result["global_step"])
        result["final"] = numbers
    curves = tracking.learning_curves(uri, run_id, figures / "learning_curves.png")
    if curves:
        made.append(curves)
    grad_plot = figures / "gradient_flow.png"
    if grad_plot.is_file():
        made.append(grad_plot)
    for path in made:
        tracking.log_artifact(uri, run_id, path, "figures")
    if (run_dir / "history.json").is_file():
        tracking.log_artifact(uri, run_id, run_dir / "history.json", "history")
    summary = {"effective_batch": result["effective_batch"], "lr_effective": result["lr_effective"]}
    if result["best_val_loss"] is not None:
        summary["best/val_loss"] = result["best_val_loss"]
    if result["best_score"] is not None:
        summary[f"best/{result['monitor'].split('/')[-1]}"] = result["best_score"]
    tracking.log_metrics(uri, run_id, summary, step=result["global_step"])
    if cfg.tracking.log_checkpoint and result["best_checkpoint"]:
        tracking.log_artifact(uri, run_id, Path(result["best_checkpoint"]), "checkpoints")
    result["figures"] = [str(p) for p in made]


def _write_once(path: Path, text: str) -> None:
    if path.is_file():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _sources(args: argparse.Namespace) -> str:
    return ", ".join(str(c) for c in args.config) + (" + --set" if args.set else "")


def _setup_logging() -> None:
    from lightning_modules.progress import log_to_stderr

    log_to_stderr("%(asctime)s %(levelname)s [rank %(rank)s] %(message)s", _RankFilter())


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = dist.global_rank()
        return True


def _silent_logger_cls():
    from pytorch_lightning.loggers.logger import Logger

    class _Silent(Logger):
        """Logs nothing: for ranks other than 0 and for fast_dev_run (LR monitor needs a logger)."""

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

    return _Silent


def SilentLogger():  # noqa: N802 - a factory that reads like a class
    return _silent_logger_cls()()


if __name__ == "__main__":
    sys.exit(main())
