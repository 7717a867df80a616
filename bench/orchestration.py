"""What launching a training stage through Dagster costs, measured in one run.

Three ways to run the same one-epoch job on the same tiny prepared data:
  1. directly:           python -m lightning_modules.train ...
  2. under torchrun:     python -m torch.distributed.run --standalone --nproc-per-node 1 -m lightning_modules.train ...
  3. as a Dagster asset: pretrained_backbone materialized in process, launched through Pipes + torchrun,
                         including the MLflow run creation and the metadata coming back.
Prints a table with the overhead of each against the direct run. Bar: <= 15 s per stage.

    .venv/bin/python bench/orchestration.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "smoke-classify.yaml"
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


def dagster(project: Path, instance) -> float:
    import dagster as dg

    from pipelines.assets.training import pretrained_backbone
    from pipelines.resources import DvcResource, MlflowResource, ProjectResource, TrainingLauncher

    resources = {
        "project": ProjectResource(root=str(project)),
        "dvc": DvcResource(root=str(project)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"),
        "launcher": TrainingLauncher(),
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
    return seconds


def main() -> None:
    import dagster as dg

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-orchestration")
    a = p.parse_args()
    project = _project(a.work)
    runs = a.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    times: dict[str, list[float]] = {"direct": [], "torchrun": [], "dagster": []}
    with dg.instance_for_test() as instance:
        for r in range(a.rounds):
            times["direct"].append(direct(project, runs / f"direct-{r}"))
            times["torchrun"].append(torchrun(project, runs / f"torchrun-{r}"))
            times["dagster"].append(dagster(project, instance))
    best = {k: min(v) for k, v in times.items()}
    base = best["direct"]
    print(f"{'one-epoch stage, best of ' + str(a.rounds):44s} {'seconds':>8s} {'overhead s':>10s} {'ratio':>6s}")
    print("-" * 72)
    labels = {
        "direct": "python -m lightning_modules.train",
        "torchrun": "torchrun (1 rank) + job",
        "dagster": "Dagster asset: MLflow run + Pipes + torchrun",
    }
    for key, label in labels.items():
        print(f"{label:44s} {best[key]:8.1f} {best[key] - base:10.1f} {best[key] / base:6.2f}x")
    print(f"launch overhead per stage (Dagster vs direct): {best['dagster'] - base:.1f} s (bar: <= 15 s)")


if __name__ == "__main__":
    main()
