"""Single-device tuning: Lightning's Tuner finds the per-device batch size and a learning rate.

    python -m lightning_modules.training.tune CONFIG --data PREPARED_DIR --out RUN_DIR [--set k=v ...]

Writes RUN_DIR/tuned.yaml (an overlay config: `data.batch_size`, `optim.lr`,
`optim.reference_batch`), RUN_DIR/figures/lr_find.png and RUN_DIR/lr_find.json (the sweep; the pick
is read from its raw losses by `lr_range`, not Lightning's suggestion). The LR is found at the tuned
per-device batch, so the overlay sets `reference_batch` to it: a DDP job then scales the LR
linearly to its effective batch. Tuning is single-device by necessity (`scale_batch_size`
refuses distributed strategies; `lr_find` only runs in fit).

On a CPU there is no out-of-memory signal, so batch scaling just doubles `max_batch_trials`
times (bounded by the data); it is meant for GPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.config import JobConfig, load_config
from lightning_modules.errors import VisionflowError
from lightning_modules.training.distributed import set_threads

log = logging.getLogger("visionflow")


def tune(
    cfg: JobConfig,
    data_dir: Path,
    run_dir: Path,
    *,
    scale_batch: bool = True,
    find_lr: bool = True,
    max_batch_trials: int | None = None,
    lr_steps: int = 100,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
) -> dict[str, Any]:
    """Tune batch size and LR on one device; write RUN_DIR/tuned.yaml; return what was found."""
    # Imported here, not at the top: `--help` and train.py (which imports this module) stay torch-free.
    import pytorch_lightning as L  # lazy: Lightning (see above)
    import torch  # lazy: torch (see above)
    from pytorch_lightning.tuner import Tuner  # lazy: Lightning (see above)

    # lazy: Lightning (see above)
    from lightning_modules.classification.datamodule import ClassificationDataModule, trains_on_gpu
    from lightning_modules.classification.module import ClassificationModule  # lazy: Lightning (see above)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(1)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    dm = ClassificationDataModule(
        data_dir, cfg.data, seed=cfg.trainer.seed, on_gpu=trains_on_gpu(cfg.trainer.accelerator)
    )
    module = ClassificationModule(
        model=cfg.model.model_dump(),
        optim=cfg.optim.model_dump(),
        loss=cfg.loss.model_dump(),
        num_classes=dm.num_classes,
        mean=dm.info.mean,
        std=dm.info.std,
        lr=cfg.optim.lr,
        channels_last=cfg.trainer.channels_last,
        augment=dm.device_augment(),
    )
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=max(1, cfg.trainer.max_epochs),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir / "tune"),
        use_distributed_sampler=False,
    )
    tuner = Tuner(trainer)
    found: dict[str, Any] = {"batch_size": cfg.data.batch_size, "lr": cfg.optim.lr}
    if scale_batch:
        on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
        trials = max_batch_trials if max_batch_trials is not None else (25 if on_gpu else 3)
        size = tuner.scale_batch_size(
            module, datamodule=dm, mode="power", init_val=cfg.data.batch_size, max_trials=trials, steps_per_trial=3
        )
        found["batch_size"] = int(size or dm.batch_size)
        dm.batch_size = found["batch_size"]
        log.info("tune: batch size per device %d", found["batch_size"])
    if find_lr:
        found.update(_find_lr(tuner, module, dm, run_dir, min_lr=min_lr, max_lr=max_lr, steps=lr_steps))
        log.info("tune: learning rate %.3g at batch %d", found["lr"], found["batch_size"])
    overlay = {
        "data": {"batch_size": found["batch_size"]},
        "optim": {"lr": found["lr"], "reference_batch": found["batch_size"]},
    }
    header = "# Written by lightning_modules.training.tune: use as an overlay config after the job's own.\n"
    (run_dir / "tuned.yaml").write_text(header + yaml.safe_dump(overlay, sort_keys=False))
    return found


def _find_lr(tuner, module, dm, run_dir: Path, *, min_lr: float, max_lr: float, steps: int) -> dict[str, Any]:
    """Lightning's LR sweep; the pick comes from our reading of its raw losses (see lr_range)."""
    from lightning_modules.training import lr_range  # lazy: Lightning; --help and train.py load this module

    with lr_range.recording_losses(module) as losses:
        finder = tuner.lr_find(
            module,
            datamodule=dm,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=steps,
            early_stop_threshold=None,
            update_attr=False,
        )
    if finder is None:
        raise VisionflowError("tune: the LR finder did not run (no training steps?)")
    lrs = list(finder.results["lr"])
    k = len(losses) // max(1, len(lrs))
    if k > 1 and len(losses) == k * len(lrs):  # gradient accumulation: k micro-batches per LR step
        losses = [sum(losses[i : i + k]) / k for i in range(0, len(losses), k)]
    try:
        s = lr_range.suggest(lrs, losses)
    except ValueError as exc:
        raise VisionflowError(f"tune: LR range test over {len(losses)} steps gave no suggestion: {exc}") from exc
    (run_dir / "figures").mkdir(exist_ok=True)
    lr_range.plot(lrs, losses, s, run_dir / "figures" / "lr_find.png")
    (run_dir / "lr_find.json").write_text(
        json.dumps(
            {
                "lr": lrs,
                "loss": losses,
                "smoothed": s.smoothed,
                "suggested_lr": s.lr,
                "lr_min_loss": s.lr_min_loss,
                "lightning_suggestion": finder.suggestion(),
            },
            default=float,
        )
    )
    return {"lr": s.lr, "lr_min_loss": s.lr_min_loss}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.training.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="+", type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lr-steps", type=int, default=100)
    p.add_argument("--max-batch-trials", type=int, default=None)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        found = tune(
            load_config(args.config, args.set),
            args.data,
            args.out,
            max_batch_trials=args.max_batch_trials,
            lr_steps=args.lr_steps,
        )
    except VisionflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(found, sort_keys=False).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
