"""Single-device tuning: Lightning's Tuner finds the per-device batch size and a learning rate.

    python -m lightning_modules.tune CONFIG --data PREPARED_DIR --out RUN_DIR [--set k=v ...]

Writes RUN_DIR/tuned.yaml (an overlay config: `data.batch_size`, `optim.lr`,
`optim.reference_batch`) and RUN_DIR/figures/lr_find.png. The LR is found at the tuned
per-device batch, so the overlay sets `reference_batch` to it: a DDP job then scales the LR
linearly to its effective batch. Tuning is single-device by necessity (`scale_batch_size`
refuses distributed strategies; `lr_find` only runs in fit).

On a CPU there is no out-of-memory signal, so batch scaling just doubles `max_batch_trials`
times (bounded by the data); it is meant for GPUs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.config import JobConfig, load_config
from lightning_modules.errors import VisionflowError

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
    import pytorch_lightning as L
    import torch

    from lightning_modules.classification import ClassificationModule
    from lightning_modules.datamodule import ClassificationDataModule
    from lightning_modules.distributed import set_threads
    from pytorch_lightning.tuner import Tuner

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(1)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    dm = ClassificationDataModule(data_dir, cfg.data, seed=cfg.trainer.seed)
    module = ClassificationModule(
        model=asdict(cfg.model), optim=asdict(cfg.optim), loss=asdict(cfg.loss), num_classes=dm.num_classes,
        mean=dm.info.mean, std=dm.info.std, lr=cfg.optim.lr, channels_last=cfg.trainer.channels_last,
    )
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
        max_epochs=max(1, cfg.trainer.max_epochs), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(run_dir / "tune"),
        use_distributed_sampler=False,
    )
    tuner = Tuner(trainer)
    found: dict[str, Any] = {"batch_size": cfg.data.batch_size, "lr": cfg.optim.lr}
    if scale_batch:
        on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
        trials = max_batch_trials if max_batch_trials is not None else (25 if on_gpu else 3)
        size = tuner.scale_batch_size(module, datamodule=dm, mode="power", init_val=cfg.data.batch_size,
                                      max_trials=trials, steps_per_trial=3)
        found["batch_size"] = int(size or dm.batch_size)
        dm.batch_size = found["batch_size"]
        log.info("tune: batch size per device %d", found["batch_size"])
    if find_lr:
        finder = tuner.lr_find(module, datamodule=dm, min_lr=min_lr, max_lr=max_lr, num_training=lr_steps,
                               early_stop_threshold=None, update_attr=False)
        suggestion = finder.suggestion() if finder is not None else None
        if suggestion is not None and suggestion > 0:
            found["lr"] = float(suggestion)
        else:
            log.warning("tune: lr_find gave no suggestion; keeping optim.lr=%s", cfg.optim.lr)
        if finder is not None:
            fig = finder.plot(suggest=suggestion is not None)
            (run_dir / "figures").mkdir(exist_ok=True)
            fig.savefig(run_dir / "figures" / "lr_find.png", dpi=100)
            import matplotlib.pyplot as plt

            plt.close(fig)
        log.info("tune: learning rate %.3g at batch %d", found["lr"], found["batch_size"])
    overlay = {
        "data": {"batch_size": found["batch_size"]},
        "optim": {"lr": found["lr"], "reference_batch": found["batch_size"]},
    }
    header = "# Written by lightning_modules.tune: use as an overlay config after the job's own.\n"
    (run_dir / "tuned.yaml").write_text(header + yaml.safe_dump(overlay, sort_keys=False))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="+", type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lr-steps", type=int, default=100)
    p.add_argument("--max-batch-trials", type=int, default=None)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        found = tune(load_config(args.config, args.set), args.data, args.out,
                     max_batch_trials=args.max_batch_trials, lr_steps=args.lr_steps)
    except VisionflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(found, sort_keys=False).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
