"""Training throughput on this CPU: the Lightning job vs a plain PyTorch loop, and DDP scaling.

    python bench/training.py [--steps 20] [--warmup 5] [--cycles 2] [--ddp-cycles 2] [--skip-ddp]
                             [--skip-lightning] [--ddp-compression auto|none|fp16|bf16]

1. Same model (ResNet-18), data (prepared litdata, 64 px), batch (64) and optimizer: the job's
   ClassificationModule + Trainer + callbacks vs a hand-written loop, alternated A B B A and
   repeated; images/s is the median of the rounds (bar: Lightning within 3% of the plain loop).
2. DDP scaling under torchrun: 2 ranks x 1 thread vs 1 rank x 1 thread (same per-rank batch);
   efficiency = throughput(2) / (2 x throughput(1)) (bar: >= 90%). One process using both cores
   is not the baseline: it would measure thread scaling, not DDP. The same run also measures the
   machine's ceiling: two independent 1-rank jobs at once, no communication at all. Their
   throughput / (2 x throughput(1)) is what the shared caches and memory of the cores allow any
   two processes; DDP's own cost (all-reduce, rank syncs) is what DDP loses against that pair.
   Two DDP arms run in the same rounds: fp32 gradients, and `--ddp-compression` (default: the job's
   own, auto = bf16 on CPU ranks, half the all-reduce bytes), the one judged against the bar.
3. FLOPs per image (torch.utils.flop_counter, forward and forward+backward) and achieved GFLOP/s.
Results go to bench/out/training.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(REPO / ".cache" / "litdata"))
os.environ.setdefault("MPLBACKEND", "Agg")

OUT = REPO / "bench" / "out"


def ensure_data(size: int) -> Path:
    """A prepared set big enough for ~25 steps of 64 without repeating (synthesized once, then reused)."""
    from lightning_modules.data.imagenet_prep import prep_classification
    from lightning_modules.data.synth import synthesize

    raw, prepared = OUT / "train-bench-raw", OUT / f"train-bench-prepared-{size}"
    if not (prepared / "manifest.json").is_file():
        if not (raw / "synth.json").is_file():
            synthesize(
                raw,
                classes=10,
                per_class=170,
                val_per_class=4,
                transfer_classes=2,
                transfer_per_class=2,
                transfer_val_per_class=1,
                det_train=1,
                det_val=1,
                workers=2,
            )
        prep_classification(raw / "imagenet", prepared, image_size=size, workers=2)
    return prepared


def job_config(args, compression: str = "none"):
    from lightning_modules.config import load_config

    return load_config(
        REPO / "configs" / "smoke-classify.yaml",
        [
            "model.name=resnet18",
            "model.width=1.0",
            "model.small_input=false",
            f"data.batch_size={args.batch}",
            "data.num_workers=0",
            "data.augment=false",
            f"data.image_size={args.size}",
            "optim.name=sgd",
            "optim.lr=0.01",
            "optim.weight_decay=1e-4",
            "optim.schedule=constant",
            "optim.warmup_epochs=0",
            "loss.name=cross_entropy",
            "loss.label_smoothing=0.0",
            f"trainer.ddp_compression={compression}",
        ],
    )


def _module_and_data(cfg, data: Path):
    from lightning_modules.classification.datamodule import ClassificationDataModule
    from lightning_modules.classification.module import ClassificationModule

    dm = ClassificationDataModule(data, cfg.data, seed=0)
    module = ClassificationModule(
        model=cfg.model.model_dump(),
        optim=cfg.optim.model_dump(),
        loss=cfg.loss.model_dump(),
        num_classes=dm.num_classes,
        mean=dm.info.mean,
        std=dm.info.std,
    )
    return module, dm


def run_lightning(cfg, data: Path, warmup: int, steps: int, devices: int = 1) -> tuple[float, tuple[float, float]]:
    """Images/s of the job's module + Trainer + standard callbacks over `steps` steps after `warmup` (all ranks),
    and the timing window (wall-clock start, end)."""
    import pytorch_lightning as L

    from lightning_modules.training.callbacks import standard_callbacks
    from lightning_modules.training.distributed import world_info
    from lightning_modules.training.trainer import SilentLogger, ddp_compression, strategy

    module, dm = _module_and_data(cfg, data)
    timer = _StepTimer(warmup, warmup + steps)
    run_dir = OUT / "train-bench-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    # The job's per-step callbacks (NaN guard, LR monitor, gradient flow every 50 steps); checkpoint
    # writes are left out: in a job they happen every N steps, not in a 20-step window.
    callbacks = [
        c
        for c in standard_callbacks(
            run_dir,
            checkpoint_every_n_steps=10_000,
            early_stopping_patience=None,
            grad_monitor_every_n_steps=50,
            nan_guard=True,
            check_grads=True,
            nan_check_every_n_steps=cfg.trainer.nan_check_every_n_steps,
        )
        if type(c).__name__ != "ModelCheckpoint"
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        # the job's own DDP settings
        strategy=strategy(
            world_info(), find_unused=False, compression=ddp_compression(cfg.trainer.ddp_compression, "cpu")
        ),
        precision="32",
        max_steps=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=SilentLogger(),
        callbacks=[*callbacks, timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
    )
    trainer.fit(module, datamodule=dm)
    return steps * cfg.data.batch_size * devices / (timer.t1 - timer.t0), (timer.t0, timer.t1)


def _step_timer_cls():
    import pytorch_lightning as L

    class StepTimer(L.Callback):
        def __init__(self, start: int, stop: int):
            self.start, self.stop, self.t0, self.t1 = start, stop, None, None

        def on_train_batch_end(self, trainer, *args) -> None:
            # time.time(): comparable across processes (the overlap of concurrent jobs' windows)
            if trainer.global_step == self.start:
                self.t0 = time.time()
            elif trainer.global_step == self.stop:
                self.t1 = time.time()

    return StepTimer


def _StepTimer(start: int, stop: int):  # noqa: N802
    return _step_timer_cls()(start, stop)


def run_plain(cfg, data: Path, warmup: int, steps: int) -> float:
    """Images/s of a hand-written loop: same backbone, loader, normalisation, SGD and loss."""
    import torch

    from lightning_modules.classification.module import param_groups
    from lightning_modules.models import build_model

    _, dm = _module_and_data(cfg, data)
    dm.setup("fit")
    model = build_model(cfg.model.name, num_classes=dm.num_classes, width=cfg.model.width)
    model.train()
    groups = param_groups(model, cfg.optim.weight_decay)
    opt = torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, fused=True)  # as the job's
    mean = torch.tensor(dm.info.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(dm.info.std).view(1, 3, 1, 1) * 255
    loss_fn = torch.nn.CrossEntropyLoss()
    done, t0 = 0, None
    while True:
        for images, labels in dm.train_dataloader():
            x = (images.float() - mean) / std
            loss = loss_fn(model(x), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == warmup:
                t0 = time.perf_counter()
            elif done == warmup + steps:
                return steps * cfg.data.batch_size / (time.perf_counter() - t0)


def flops_per_image(cfg, size: int) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_modules.models import build_model

    model = build_model(cfg.model.name, num_classes=10, width=cfg.model.width)
    x = torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as fwd:
        out = model(x)
    with FlopCounterMode(display=False) as both:
        model(x).sum().backward()
    del out
    return fwd.get_total_flops() / 2, both.get_total_flops() / 2


def ddp_worker(args) -> None:
    """One torchrun rank: the job's module under DDP; rank 0 writes images/s (all ranks) to --result."""
    from lightning_modules.training import distributed as dist

    dist.set_threads()
    cfg, ranks = job_config(args, args.ddp_compression), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    ips, window = run_lightning(cfg, Path(args.data), args.warmup, args.steps, devices=ranks)
    if dist.is_global_zero():
        Path(args.result).write_text(json.dumps({"images_per_s": ips, "window": window}))


def start_torchrun(args, data: Path, ranks: int, result: Path, compression: str = "none") -> subprocess.Popen:
    result.unlink(missing_ok=True)
    env = {**os.environ, "VISIONFLOW_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        str(Path(__file__).resolve()),
        "--ddp-worker",
        "--data",
        str(data),
        "--result",
        str(result),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--ddp-compression",
        compression,
    ]
    # Output to a file, not a pipe: of two jobs at once, the one not being waited on would block on a full pipe.
    log = result.with_suffix(".log").open("w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(job: subprocess.Popen, result: Path) -> dict:
    if job.wait() != 0:
        raise RuntimeError(f"torchrun failed:\n{result.with_suffix('.log').read_text()[-3000:]}")
    return json.loads(result.read_text())


def ddp_round(args, data: Path, ranks: int, compression: str = "none") -> float:
    result = OUT / f"train-bench-ddp-{ranks}-{compression}.json"
    return finish(start_torchrun(args, data, ranks, result, compression), result)["images_per_s"]


def independent_round(args, data: Path, overlaps: list[float]) -> float:
    """Two 1-rank jobs started together, each on one thread, no communication: their summed images/s.
    Appends to `overlaps` the share of the longer timing window during which both were timing."""
    results = [OUT / f"train-bench-solo-{i}.json" for i in range(2)]
    jobs = [start_torchrun(args, data, 1, r) for r in results]
    done = [finish(j, r) for j, r in zip(jobs, results, strict=True)]
    (a0, a1), (b0, b1) = (d["window"] for d in done)
    overlaps.append(max(0.0, min(a1, b1) - max(a0, b0)) / max(a1 - a0, b1 - b0))
    return sum(d["images_per_s"] for d in done)


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def abc(arms, cycles: int) -> list[list[float]]:
    """Each cycle runs the arms in order, then in reverse (A B C C B A): drift hits every arm alike."""
    rounds: list[list[float]] = [[] for _ in arms]
    for _ in range(cycles):
        for i in [*range(len(arms)), *reversed(range(len(arms)))]:
            rounds[i].append(arms[i]())
    return rounds


def lightning_vs_plain(args, cfg, data: Path, gf: float, threads: int, results: dict) -> None:
    light, plain = abc(
        [
            lambda: run_lightning(cfg, data, args.warmup, args.steps)[0],
            lambda: run_plain(cfg, data, args.warmup, args.steps),
        ],
        args.cycles,
    )
    rows = {"lightning": statistics.median(light), "plain": statistics.median(plain)}
    print(
        f"{'plain PyTorch loop (' + str(threads) + ' threads)':34s} {rows['plain']:8.1f} {spread(plain):>13s} "
        f"{rows['plain'] * gf:8.1f}  1.000"
    )
    ratio = rows["lightning"] / rows["plain"]
    per_round = [a / b for a, b in zip(light, plain, strict=True)]  # ABBA: round i of each side ran side by side
    print(
        f"{'Lightning job (' + str(threads) + ' threads)':34s} {rows['lightning']:8.1f} {spread(light):>13s} "
        f"{rows['lightning'] * gf:8.1f}  {ratio:.3f} ({min(per_round):.3f}-{max(per_round):.3f})  "
        f"(bar >= 0.97: {'PASS' if ratio >= 0.97 else 'FAIL'})"
    )
    results["rounds"].update({"lightning": light, "plain": plain})
    results.update(
        {
            "lightning_images_per_s": rows["lightning"],
            "plain_images_per_s": rows["plain"],
            "lightning_over_plain": ratio,
        }
    )


def ddp_scaling(args, data: Path, gf: float, results: dict) -> None:
    """A B C D D C B A: one rank, the independent pair, DDP with fp32 gradients, DDP as the job runs it
    (`--ddp-compression`, by default the job's own default)."""
    overlaps: list[float] = []
    one, pair, plain, job = abc(
        [
            lambda: ddp_round(args, data, 1),
            lambda: independent_round(args, data, overlaps),
            lambda: ddp_round(args, data, 2, "none"),
            lambda: ddp_round(args, data, 2, args.ddp_compression),
        ],
        args.ddp_cycles,
    )
    m1, mp = statistics.median(one), statistics.median(pair)
    ceilings = [p / (2 * a) for a, p in zip(one, pair, strict=True)]
    print(f"{'DDP 1 rank x 1 thread (torchrun)':34s} {m1:8.1f} {spread(one):>13s} {m1 * gf:8.1f}  1.000")
    print(
        f"{'2 independent 1-rank jobs at once':34s} {mp:8.1f} {spread(pair):>13s} {mp * gf:8.1f}  {mp / m1:.3f}  "
        f"ceiling {mp / (2 * m1):.3f} ({min(ceilings):.3f}-{max(ceilings):.3f}): no communication; their timing "
        f"windows overlapped {min(overlaps):.0%}-{max(overlaps):.0%}"
    )
    effs = {}
    for label, two in (("fp32 gradients", plain), (f"ddp_compression={args.ddp_compression}", job)):
        m2 = statistics.median(two)
        # A B C D D C B A: round i of every arm ran side by side, so per-round ratios show the spread
        per_round = [b / (2 * a) for a, b in zip(one, two, strict=True)]
        own = [b / p for p, b in zip(pair, two, strict=True)]
        effs[label] = eff = m2 / (2 * m1)
        bar = f"(bar >= 0.90: {'PASS' if eff >= 0.9 else 'FAIL'})" if two is job else ""
        print(
            f"{'DDP 2x1, ' + label:34s} {m2:8.1f} {spread(two):>13s} {m2 * gf:8.1f}  {m2 / m1:.3f}  "
            f"efficiency {eff:.3f} ({min(per_round):.3f}-{max(per_round):.3f}) {bar}"
        )
        print(
            f"{'':34s} vs the independent pair {m2 / mp:.3f} ({min(own):.3f}-{max(own):.3f}): DDP's own cost "
            f"(all-reduce, rank syncs) {1 - m2 / mp:+.1%}, the machine's {1 - mp / (2 * m1):+.1%}"
        )
    results["ddp_compression"] = args.ddp_compression
    results["rounds"].update(
        {"ddp_1rank_1thread": one, "independent_pair": pair, "ddp_2ranks_fp32": plain, "ddp_2ranks_job": job}
    )
    results.update(
        {
            "ddp_1x1_images_per_s": m1,
            "independent_pair_images_per_s": mp,
            "ddp_2x1_fp32_images_per_s": statistics.median(plain),
            "ddp_2x1_images_per_s": statistics.median(job),
            "ddp_efficiency_fp32": effs["fp32 gradients"],
            "ddp_efficiency": effs[f"ddp_compression={args.ddp_compression}"],
            "machine_ceiling": mp / (2 * m1),
            "pair_window_overlap": overlaps,
        }
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--cycles", type=int, default=2, help="ABBA cycles (each runs both sides twice)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="threads for part 1 (default: all cores)")
    p.add_argument("--ddp-cycles", type=int, default=2, help="ABC CBA cycles of the DDP comparison")
    p.add_argument(
        "--ddp-compression",
        default="auto",
        choices=["auto", "none", "fp16", "bf16"],
        help="trainer.ddp_compression of the DDP arm judged against the bar (an fp32 arm always runs beside it)",
    )
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--skip-lightning", action="store_true", help="only the DDP part")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    import torch

    from lightning_modules.training.distributed import cpu_count

    OUT.mkdir(parents=True, exist_ok=True)
    data = ensure_data(args.size)
    cfg = job_config(args)
    threads = args.threads or cpu_count()
    torch.set_num_threads(threads)
    os.environ["VISIONFLOW_THREADS"] = str(threads)
    fwd, train_flops = flops_per_image(cfg, args.size)
    gf = train_flops / 1e9
    results: dict = {
        "model": "resnet18",
        "image_size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "threads": threads,
        "torch": torch.__version__,
        "rounds": {},
        "flops_forward_per_image": fwd,
        "flops_train_per_image": train_flops,
    }
    print(
        f"\nResNet-18 at {args.size} px, batch {args.batch}, {args.steps} steps after {args.warmup} warmup, "
        f"median of {2 * args.cycles} rounds (ABBA); {fwd / 1e9:.3f} GFLOP/img forward, {gf:.3f} fwd+bwd"
    )
    print(f"{'setup':34s} {'img/s':>8s} {'min-max':>13s} {'GFLOP/s':>8s}  ratio (min-max over rounds)", flush=True)
    t0 = time.time()
    if not args.skip_lightning:
        lightning_vs_plain(args, cfg, data, gf, threads, results)
    if not args.skip_ddp:
        ddp_scaling(args, data, gf, results)
    results["seconds"] = round(time.time() - t0, 1)
    (OUT / "training.json").write_text(json.dumps(results, indent=2))
    print(f"rounds: {json.dumps(results['rounds'])}\nwritten: {OUT / 'training.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
