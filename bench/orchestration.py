"""What launching a training stage through Dagster costs, measured in one run.

Ways to run the same one-epoch job on the same tiny prepared data:
  1. directly:           python -m lightning_modules.train ...
  2. under torchrun:     python -m torch.distributed.run --standalone --nproc-per-node 1 -m lightning_modules.train ...
  3. as a Dagster asset: pretrained_backbone materialized in process, launched through Pipes + torchrun,
                         including the MLflow run creation and the metadata coming back.
  4. with --slurm, the same asset on the Slurm deployment: sbatch, srun, torchrun, on a one-node Slurm
     cluster started for the benchmark (pipelines/slurm_cluster.py; needs Debian's slurm-wlm and munge).
Prints a table with the overhead of each against the direct run, and for the assets the time from the
step's start to the first epoch's report. Bar: <= 15 s per stage.

    .venv/bin/python bench/orchestration.py [--rounds 2] [--slurm]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "smoke-classify.yaml"
from pipelines.launcher import LocalLauncher  # noqa: E402  (after the path insert above)
from pipelines.slurm import SlurmLauncher  # noqa: E402
from pipelines.slurm_cluster import local_cluster  # noqa: E402

OVERRIDES = ["trainer.max_epochs=1", "data.image_size=32", "model.width=0.25", "data.num_workers=0"]


def _project(work: Path) -> Path:
    from lightning_modules.data import versioning
    from lightning_modules.data.imagenet_prep import prep_classification
    from lightning_modules.data.synth import synthesize

    project = work / "project"
    if not (project / "prepared" / "imagenet" / "manifest.json").is_file():
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir(parents=True)
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        synthesize(
            project / "data",
            classes=5,
            per_class=40,
            val_per_class=8,
            transfer_classes=2,
            transfer_per_class=4,
            transfer_val_per_class=2,
            det_train=8,
            det_val=4,
        )
        versioning.init(project, str(work / "remote"))
        versioning.add(project)
        prep_classification(project / "data" / "imagenet", project / "prepared" / "imagenet", image_size=32)
    return project


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def direct(project: Path, out: Path) -> float:
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    return _timed(
        [
            sys.executable,
            "-m",
            "lightning_modules.train",
            str(CONFIG),
            "--data",
            str(project / "prepared" / "imagenet"),
            "--out",
            str(out),
            *sets,
        ]
    )


def torchrun(project: Path, out: Path) -> float:
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    return _timed(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "1",
            "-m",
            "lightning_modules.train",
            str(CONFIG),
            "--data",
            str(project / "prepared" / "imagenet"),
            "--out",
            str(out),
            *sets,
        ]
    )


def dagster(project: Path, instance, launcher) -> tuple[float, float]:
    """Seconds for the whole materialization, and from the step's start to the first epoch's report."""
    import dagster as dg

    from pipelines.assets.training import pretrained_backbone
    from pipelines.console import EPOCH_LINE
    from pipelines.resources import DvcResource, MlflowResource, ProjectResource

    resources = {
        "project": ProjectResource(root=str(project)),
        "dvc": DvcResource(root=str(project)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"),
        "launcher": launcher,
    }
    config = {"config_file": str(CONFIG), "overrides": OVERRIDES}
    start = time.perf_counter()
    result = dg.materialize(
        [pretrained_backbone],
        partition_key="resnet18",
        instance=instance,
        resources=resources,
        run_config={"ops": {"pretrained_backbone": {"config": config}}},
    )
    seconds = time.perf_counter() - start
    assert result.success
    logs = instance.all_logs(result.run_id)
    started = next(e.timestamp for e in logs if e.dagster_event and e.dagster_event.event_type_value == "STEP_START")
    first_epoch = next(e.timestamp for e in logs if EPOCH_LINE.match(e.user_message or ""))
    return seconds, first_epoch - started


def main() -> None:
    import dagster as dg

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-orchestration")
    p.add_argument("--slurm", action="store_true", help="also through Slurm, on a one-node cluster started here")
    a = p.parse_args()
    project = _project(a.work)
    runs = a.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        launchers = {"dagster": LocalLauncher()}
        if a.slurm:
            env = stack.enter_context(local_cluster(a.work / "slurm-cluster"))
            os.environ["SLURM_CONF"] = env["SLURM_CONF"]
            launchers["slurm"] = SlurmLauncher(shared_folder=str(a.work / "slurm-steps"), poll_seconds=0.25)
        times, first_epoch = _rounds(a.rounds, project, runs, launchers, stack.enter_context(dg.instance_for_test()))
    best = {k: min(v) for k, v in times.items()}
    base = best["direct"]
    print(f"{'one-epoch stage, best of ' + str(a.rounds):48s} {'seconds':>8s} {'overhead s':>10s} {'ratio':>6s}")
    print("-" * 76)
    labels = {
        "direct": "python -m lightning_modules.train",
        "torchrun": "torchrun (1 rank) + job",
        "dagster": "Dagster asset: MLflow run + Pipes + torchrun",
        "slurm": "Dagster asset on Slurm: sbatch + srun + torchrun",
    }
    for key in best:
        print(f"{labels[key]:48s} {best[key]:8.1f} {best[key] - base:10.1f} {best[key] / base:6.2f}x")
    for key, seconds in first_epoch.items():
        print(f"{labels[key]}: step start to first epoch {min(seconds):.1f} s (rounds: {_list(seconds)})")
    if "slurm" in best:
        print(f"Slurm overhead vs local torchrun per stage: {best['slurm'] - best['dagster']:.1f} s")
    print(f"launch overhead per stage (Dagster vs direct): {best['dagster'] - base:.1f} s (bar: <= 15 s)")


def _rounds(rounds: int, project: Path, runs: Path, launchers: dict, instance) -> tuple[dict, dict]:
    times: dict[str, list[float]] = {"direct": [], "torchrun": [], **{k: [] for k in launchers}}
    first_epoch: dict[str, list[float]] = {k: [] for k in launchers}
    for r in range(rounds):
        times["direct"].append(direct(project, runs / f"direct-{r}"))
        times["torchrun"].append(torchrun(project, runs / f"torchrun-{r}"))
        for key, launcher in launchers.items():
            seconds, to_epoch = dagster(project, instance, launcher)
            times[key].append(seconds)
            first_epoch[key].append(to_epoch)
    return times, first_epoch


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
