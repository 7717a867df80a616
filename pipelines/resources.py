"""Dagster resources: the project folders, DVC, MLflow and the training launcher.

`resources_for(deployment)` gives one set per deployment ("local", "slurm" or "cluster"), picked by the
VISIONFLOW_DEPLOYMENT environment variable; assets never change between them.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from lightning_modules import tracking
from lightning_modules.data import lineage, versioning
from lightning_modules.paths import project_root
from pipelines.k8s import K8sLauncher
from pipelines.launcher import LocalLauncher, TrainingLauncher
from pipelines.slurm import SlurmLauncher

__all__ = ["DvcResource", "MlflowResource", "ProjectResource", "TrainingLauncher", "resources_for"]


class ProjectResource(dg.ConfigurableResource):
    """The project root; raw data, prepared sets and runs are folders under it."""

    root: str = str(project_root())

    @property
    def path(self) -> Path:
        return Path(self.root)

    def raw(self, name: str) -> Path:
        return self.path / "data" / name

    def prepared(self, name: str) -> Path:
        return self.path / "prepared" / name

    def prepared_version(self, name: str) -> str:
        """The data version the prep of `name` recorded (DVC md5 of its source, else its content hash)."""
        return lineage.prepared_version(self.prepared(name))

    def run_dir(self, context: dg.AssetExecutionContext) -> Path:
        """runs/<asset>/<partition>/<dagster run id>: a retry of the same Dagster run resumes in it."""
        partition = context.partition_key if context.has_partition_key else "all"
        return self.path / "runs" / context.asset_key.to_user_string() / partition / context.run.run_id


class DvcResource(dg.ConfigurableResource):
    """Reads the data version from `data.dvc` (no DVC lock); writes go through the library's file lock."""

    root: str = str(project_root())

    def data_version(self) -> str | None:
        """The committed version (data.dvc): what the sensor and the raw_data observation follow."""
        return versioning.read_data_version(Path(self.root) / "data.dvc")

    def workspace_version(self) -> str | None:
        """The committed version if data/ on disk still matches it, else None (the prep then versions by content)."""
        return versioning.workspace_version(Path(self.root))

    def add_and_push(self) -> str:
        version = versioning.add(Path(self.root))
        versioning.push(Path(self.root))
        return version


class MlflowResource(dg.ConfigurableResource):
    """Creates each stage's MLflow run (experiment per stage) with its lineage tags, for the job to log into."""

    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db
    experiment_prefix: str = "visionflow"
    ui_url: str = "http://127.0.0.1:5000"

    def uri(self) -> str:
        return tracking.resolve_uri(self.tracking_uri or None)

    def experiment(self, stage: str) -> str:
        return f"{self.experiment_prefix}-{stage}"

    def start_run(
        self,
        context: dg.AssetExecutionContext,
        stage: str,
        run_dir: Path,
        data_version: str | None,
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        """Create (or, on a retry, reopen) the run; its id lands in RUN_DIR/mlflow_run_id, where the job finds it."""
        uri = self.uri()
        tracking.ensure_store(uri)  # before any rank starts: ranks race on a fresh SQLite schema
        run_dir.mkdir(parents=True, exist_ok=True)
        partition = context.partition_key if context.has_partition_key else ""
        tags = {
            "dagster_run_id": context.run.run_id,
            "dagster_asset_key": context.asset_key.to_user_string(),
            "dagster_partition": partition,
            "data_version": data_version or "untracked",
            "git_sha": tracking.git_sha(),
            "stage": stage,
            **(extra_tags or {}),
        }
        name = f"{context.asset_key.to_user_string()}{'-' + partition if partition else ''}-{context.run.run_id[:8]}"
        run_id, _ = tracking.open_run(uri, self.experiment(stage), run_dir, name, tags)
        return run_id

    def run_url(self, run_id: str) -> str:
        return tracking.run_url(self.uri(), run_id, self.ui_url)


def resources_for(deployment: str | None = None) -> dict:
    """The resource set of a deployment: "local" (default), "slurm" or "cluster" (VISIONFLOW_DEPLOYMENT)."""
    deployment = deployment or os.environ.get("VISIONFLOW_DEPLOYMENT", "local")
    common = {"project": ProjectResource(), "dvc": DvcResource(), "mlflow": MlflowResource()}
    if deployment == "local":
        nproc = int(os.environ.get("VISIONFLOW_NPROC", "1"))
        return {**common, "launcher": LocalLauncher(nproc_per_node=nproc)}
    if deployment == "slurm":
        env = os.environ.get
        return {
            **common,
            "launcher": SlurmLauncher(
                nproc_per_node=int(env("VISIONFLOW_NPROC", "1")),  # torchrun ranks per node
                nodes=int(env("VISIONFLOW_SLURM_NODES", "1")),
                partition=env("VISIONFLOW_SLURM_PARTITION", ""),
                cpus_per_task=int(env("VISIONFLOW_SLURM_CPUS_PER_NODE", "0")),
                gpus_per_node=int(env("VISIONFLOW_SLURM_GPUS_PER_NODE", "0")),
                time_limit=env("VISIONFLOW_SLURM_TIME", ""),
            ),
        }
    if deployment == "cluster":
        # deploy/helm/values.yaml sets these on the user code deployment (and so on its run pods).
        gpus = int(os.environ.get("VISIONFLOW_GPUS_PER_POD", "1"))
        return {
            **common,
            "launcher": K8sLauncher(
                image=os.environ.get("VISIONFLOW_IMAGE", "visionflow:latest"),
                namespace=os.environ.get("VISIONFLOW_NAMESPACE", "default"),
                nproc_per_node=gpus or int(os.environ.get("VISIONFLOW_NPROC", "1")),
                gpus_per_pod=gpus,
                cpu=os.environ.get("VISIONFLOW_CPU", "8"),
                memory=os.environ.get("VISIONFLOW_MEMORY", "32Gi"),
                shm_size=os.environ.get("VISIONFLOW_SHM_SIZE", "8Gi"),
                shared_volume_claim=os.environ.get("VISIONFLOW_RUNS_PVC", ""),
            ),
        }
    raise ValueError(f"VISIONFLOW_DEPLOYMENT={deployment!r}: expected 'local', 'slurm' or 'cluster'")


def default_resources() -> dict:
    return resources_for()
