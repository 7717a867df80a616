"""Training throughput on this CPU: the Lightning job vs a plain PyTorch loop, and DDP scaling.

    python bench/training.py [--pairs 100] [--block 10] [--ddp-step-cycles 30] [--block-cycles 5]
                             [--skip-ddp] [--skip-lightning] [--ddp-cycles N [--steps 20] [--ddp-compression auto]]

1. Same model (ResNet-18), data (prepared litdata, 64 px), batch (64) and optimizer: the job's
   ClassificationModule + Trainer + callbacks vs a hand-written loop, in one process, alternating
   step by step (see `interleaved`); the ratio is over all the steps, its spread over blocks of
   `--block` steps (bar: Lightning within 3% of the plain loop).
2. DDP scaling, 2 ranks x 1 thread vs 1 rank x 1 thread (same per-rank batch), gloo:
   efficiency = throughput(2) / (2 x throughput(1)) (bar: >= 90%). One process using both cores
   is not the baseline: it would measure thread scaling, not DDP. bench/ddp_interleaved.py runs four
   arms step by step under one torchrun: one rank; two ranks with no communication (the machine's
   ceiling: what its shared caches, memory and host allow any two processes); DDP with fp32 gradients;
   DDP with bf16 gradients (the job's CPU default). DDP's own cost is what it loses against the pair.
   `--ddp-cycles N` also times whole torchrun jobs of the job's module and Trainer in turn
   (A B C D D C B A): what a job sees, but on this VM two busy processes swing 15% from one run to
   the next, so those figures are read only with their spread.
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


def run_lightning(
    cfg, data: Path, warmup: int, steps: int, devices: int = 1, extra_callbacks: tuple = ()
) -> tuple[float, tuple[float, float]]:
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
        callbacks=[*callbacks, timer, *extra_callbacks],
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


class PlainLoop:
    """A hand-written loop: same backbone, loader, normalisation, SGD and loss as the job."""

    def __init__(self, cfg, data: Path) -> None:
        import torch

        from lightning_modules.classification.module import param_groups
        from lightning_modules.models import build_model

        _, self.dm = _module_and_data(cfg, data)
        self.dm.setup("fit")
        self.model = build_model(cfg.model.name, num_classes=self.dm.num_classes, width=cfg.model.width)
        self.model.train()
        groups = param_groups(self.model, cfg.optim.weight_decay)
        self.opt = torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, fused=True)  # as the job's
        self.mean = torch.tensor(self.dm.info.mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(self.dm.info.std).view(1, 3, 1, 1) * 255
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.batches = self._forever()

    def _forever(self):
        while True:
            yield from self.dm.train_dataloader()

    def step(self) -> float:
        """One training step, fetching its batch included; its seconds."""
        t0 = time.perf_counter()
        images, labels = next(self.batches)
        loss = self.loss_fn(self.model((images.float() - self.mean) / self.std), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def interleaved(cfg, data: Path, warmup: int, pairs: int) -> dict[str, list[float]]:
    """Seconds of each step of the Lightning job and of the plain loop, alternating step by step in one
    process: after every Lightning step a callback runs one plain-loop step. A Lightning step is the time
    between two of those, so its batch fetch, hooks, logging, callbacks and epoch ends are all in it. Whole
    runs taken in turn (A B B A) could not measure 3% here: this VM's speed moves up to 20% within
    minutes, and step by step the drift hits both loops alike."""
    import pytorch_lightning as L

    plain = PlainLoop(cfg, data)
    times: dict[str, list[float]] = {"lightning": [], "plain": []}

    class Interleave(L.Callback):
        mark: float | None = None

        def on_train_batch_end(self, trainer, *args) -> None:
            now = time.perf_counter()
            timed = trainer.global_step > warmup
            if timed and self.mark is not None:
                times["lightning"].append(now - self.mark)
            seconds = plain.step()
            if timed:
                times["plain"].append(seconds)
            self.mark = time.perf_counter()

    run_lightning(cfg, data, warmup, pairs, extra_callbacks=(Interleave(),))
    return times


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
    times = interleaved(cfg, data, args.warmup, args.pairs)
    light, plain = times["lightning"], times["plain"]
    ips = {k: len(v) * args.batch / sum(v) for k, v in times.items()}
    # spread: the ratio over blocks of consecutive pairs
    k = args.block
    blocks = [sum(plain[i : i + k]) / sum(light[i : i + k]) for i in range(0, len(light) - k + 1, k)]
    ratio = ips["lightning"] / ips["plain"]
    label = f"plain PyTorch loop ({threads} threads)"
    print(f"{label:34s} {ips['plain']:8.1f} {'':>13s} {ips['plain'] * gf:8.1f}  1.000")
    print(
        f"{'Lightning job (' + str(threads) + ' threads)':34s} {ips['lightning']:8.1f} {'':>13s} "
        f"{ips['lightning'] * gf:8.1f}  {ratio:.3f} (blocks of {k} steps: {min(blocks):.3f}-{max(blocks):.3f}, "
        f"median {statistics.median(blocks):.3f})  (bar >= 0.97: {'PASS' if ratio >= 0.97 else 'FAIL'})"
    )
    results["step_seconds"] = times
    results.update(
        {
            "lightning_images_per_s": ips["lightning"],
            "plain_images_per_s": ips["plain"],
            "lightning_over_plain": ratio,
            "lightning_over_plain_blocks": blocks,
        }
    )


def ddp_step_by_step(args, data: Path, gf: float, results: dict) -> None:
    """bench/ddp_interleaved.py under torchrun: one rank, the independent pair, DDP fp32 and bf16 step by step."""
    out = OUT / "train-bench-ddp-interleaved.json"
    out.unlink(missing_ok=True)
    script = Path(__file__).with_name("ddp_interleaved.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    cmd += [str(data), str(out), str(args.size), str(args.batch), str(args.ddp_step_cycles), "2"]
    env = {**os.environ, "VISIONFLOW_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    seconds = json.loads(out.read_text())["seconds"]
    t1 = sum(seconds["one_rank"])
    k = 2 * args.block_cycles  # each cycle runs every arm twice (A B C D D C B A)
    n = len(seconds["one_rank"])

    def blocks(arm: str) -> list[float]:
        return [sum(seconds["one_rank"][i : i + k]) / sum(seconds[arm][i : i + k]) for i in range(0, n - k + 1, k)]

    ips1 = n * args.batch / t1
    print(f"{'DDP step by step: 1 rank x 1 thread':34s} {ips1:8.1f} {'':>13s} {ips1 * gf:8.1f}  1.000")
    labels = {
        "pair": "2 ranks, no communication",
        "ddp_fp32": "DDP 2x1, fp32 gradients",
        "ddp_bf16": "DDP 2x1, bf16 (the job's CPU default)",
    }
    effs = {}
    for arm, label in labels.items():
        effs[arm] = eff = t1 / sum(seconds[arm])
        b = blocks(arm)
        what = "ceiling" if arm == "pair" else "efficiency"
        bar = f" (bar >= 0.90: {'PASS' if eff >= 0.9 else 'FAIL'})" if arm == "ddp_bf16" else ""
        print(
            f"{label:34s} {2 * eff * ips1:8.1f} {'':>13s} {2 * eff * ips1 * gf:8.1f}  {2 * eff:.3f}  "
            f"{what} {eff:.3f} (blocks of {args.block_cycles} cycles: {min(b):.3f}-{max(b):.3f}){bar}"
        )
    for arm in ("ddp_fp32", "ddp_bf16"):
        print(f"{'':34s} {arm}: DDP's own cost against the pair {1 - effs[arm] / effs['pair']:+.1%}")
    results["ddp_step_seconds"] = seconds
    results.update(
        {
            "ddp_step_ceiling": effs["pair"],
            "ddp_step_efficiency_fp32": effs["ddp_fp32"],
            "ddp_step_efficiency": effs["ddp_bf16"],
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
    p.add_argument("--pairs", type=int, default=100, help="Lightning and plain-loop steps, alternating")
    p.add_argument("--block", type=int, default=10, help="steps per block for the ratio's spread")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="threads for part 1 (default: all cores)")
    p.add_argument("--ddp-step-cycles", type=int, default=30, help="cycles of the step-by-step DDP comparison")
    p.add_argument("--block-cycles", type=int, default=5, help="cycles per block for its spread")
    p.add_argument(
        "--ddp-cycles", type=int, default=0, help="A B C D D C B A cycles of whole DDP jobs in turn (noisy; 0: off)"
    )
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
        f"\nResNet-18 at {args.size} px, batch {args.batch}, {args.warmup} warmup steps; {fwd / 1e9:.3f} GFLOP/img "
        f"forward, {gf:.3f} fwd+bwd. Lightning vs plain: {args.pairs} steps each, alternating step by step; "
        f"DDP: {args.ddp_step_cycles} cycles of the four arms, step by step"
    )
    print(f"{'setup':34s} {'img/s':>8s} {'min-max':>13s} {'GFLOP/s':>8s}  ratio (min-max over rounds)", flush=True)
    t0 = time.time()
    if not args.skip_lightning:
        lightning_vs_plain(args, cfg, data, gf, threads, results)
    if not args.skip_ddp:
        ddp_step_by_step(args, data, gf, results)
        if args.ddp_cycles:
            ddp_scaling(args, data, gf, results)
    results["seconds"] = round(time.time() - t0, 1)
    (OUT / "training.json").write_text(json.dumps(results, indent=2))
    if results["rounds"]:  # only whole-job rounds (--ddp-cycles) have them
        print(f"rounds: {json.dumps(results['rounds'])}")
    print(f"written: {OUT / 'training.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
