"""May CPU (gloo) DDP send its gradients as bf16? A parity study whose criterion was fixed before its runs.

    python bench/ddp_compression.py [--seeds 0 1 2] [--epochs 20]

`trainer.ddp_compression=bf16` halves the bytes of DDP's gradient all-reduce (PyTorch's bf16_compress_hook:
each bucket is cast to bf16, summed across ranks, divided and cast back). It is only a safe default if
the job learns the same with it. This study trains the `make run` pretraining recipe
(configs/pretrain-cpu.yaml: ResNet-18 at half width, 32 px) on a synthetic 10-class set (60 train and
40 val images per class) under torchrun, 2 ranks x 1 thread, with `trainer.ddp_compression` none and
bf16, for each seed. A seed fixes the init, the data order and the augmentation, so the two arms of a
seed differ only by the rounding of the all-reduce.

Criterion (written down on 2026-12-07, before any run of this study):
  metric: val top-1 of the final epoch (400 val images), mean over the seeds;
  bf16 passes when  mean(bf16) >= mean(none) - range(none),  range = max - min of the uncompressed arm
  over the seeds (what a change of seed alone moves the metric), and every bf16 run finishes with a finite loss.
Reported, not judged: per-seed paired differences, final val loss, best val top-1, fit seconds.
Results go to bench/out/ddp_compression.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(REPO / ".cache" / "litdata"))

from lightning_modules.contract import JobRequest, read_result  # noqa: E402

OUT = REPO / "bench" / "out" / "ddp-compression"
ARMS = ("none", "bf16")


def ensure_data() -> Path:
    """The embedded set's classification part at its default size, with a larger val split (finer top-1)."""
    from lightning_modules.data.imagenet_prep import prep_classification
    from lightning_modules.data.synth import synthesize

    raw, prepared = OUT / "raw", OUT / "prepared"
    if not (prepared / "manifest.json").is_file():
        if not (raw / "synth.json").is_file():
            synthesize(
                raw, val_per_class=40, transfer_classes=2, transfer_per_class=2, transfer_val_per_class=1,
                transfer_test_per_class=1, det_train=1, det_val=1, det_test=1, workers=2,
            )  # fmt: skip
        prep_classification(raw / "imagenet", prepared, image_size=32, workers=2)
    return prepared


def train(data: Path, arm: str, seed: int, epochs: int) -> dict:
    """One 2-rank DDP job under torchrun; its result.json (a finished run is read back, not trained again)."""
    run_dir = OUT / "runs" / f"{arm}-seed{seed}"
    request = JobRequest(
        configs=(str(REPO / "configs" / "pretrain-cpu.yaml"),),
        data=data,
        run_dir=run_dir,
        overrides=(f"trainer.ddp_compression={arm}", f"trainer.seed={seed}", f"trainer.max_epochs={epochs}"),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *request.module_args()]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{OUT / 'mlflow.db'}"}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with (run_dir.parent / f"{arm}-seed{seed}.log").open("w") as log:
        if subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"{arm} seed {seed} failed: see {log.name}")
    result = read_result(run_dir)
    history = result["history"]
    return {
        "top1": result["metrics"]["val/acc1"],
        "loss": result["metrics"]["val/loss"],
        "best_top1": max(row["val_acc1"] for row in history),
        "seconds": result["fit_seconds_this_attempt"],
    }


def verdict(runs: dict[str, list[dict]]) -> tuple[bool, str]:
    """The criterion above, applied to final val top-1."""
    none, bf16 = ([r["top1"] for r in runs[a]] for a in ARMS)
    allowed = statistics.mean(none) - (max(none) - min(none))
    finite = all(r["loss"] == r["loss"] and abs(r["loss"]) != float("inf") for r in runs["bf16"])
    ok = finite and statistics.mean(bf16) >= allowed
    return ok, f"mean bf16 {statistics.mean(bf16):.4f} vs allowed >= {allowed:.4f}: {'PASS' if ok else 'FAIL'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    data = ensure_data()
    # Seed-major, arms alternating: a drift of the host's speed hits both arms alike (seconds are reported).
    runs: dict[str, list[dict]] = {a: [] for a in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            runs[arm].append(train(data, arm, seed, args.epochs))
            print(f"seed {seed} {arm:4s}: {runs[arm][-1]}", flush=True)
    print(f"\n{'arm':6s} {'final val top-1 per seed':>28s} {'mean':>7s} {'range':>7s} {'val loss':>9s} {'fit s':>7s}")
    for arm in ARMS:
        top1 = [r["top1"] for r in runs[arm]]
        print(
            f"{arm:6s} {' '.join(f'{t:.4f}' for t in top1):>28s} {statistics.mean(top1):7.4f} "
            f"{max(top1) - min(top1):7.4f} {statistics.mean(r['loss'] for r in runs[arm]):9.4f} "
            f"{statistics.median(r['seconds'] for r in runs[arm]):7.1f}"
        )
    diffs = [b["top1"] - n["top1"] for n, b in zip(runs["none"], runs["bf16"], strict=True)]
    print("paired bf16 - none per seed:", " ".join(f"{d:+.4f}" for d in diffs))
    ok, line = verdict(runs)
    (OUT / "ddp_compression.json").write_text(json.dumps({"seeds": args.seeds, "runs": runs, "pass": ok}, indent=1))
    print(line)


if __name__ == "__main__":
    main()
