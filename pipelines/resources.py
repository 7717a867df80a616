"""Dagster resources: the project folders, DVC, MLflow and the training launcher.

`resources_for(deployment)` gives one set per deployment ("local" or "cluster"), picked by the
VISIONFLOW_DEPLOYMENT environment variable; assets never change between them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import dagster as dg

from lightning_modules import tracking
from lightning_modules.contract import JobRequest
from lightning_modules.data import lineage, versioning
from lightning_modules.errors import VisionflowError
from lightning_modules.paths import project_root
from pipelines.launcher import check_reported, k8s_pod_spec, rank_errors, step_command, torchrun_command


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


class TrainingLauncher(dg.ConfigurableResource):
    """Runs `python -m lightning_modules.train` under torchrun through Dagster Pipes.

    backend "local": a subprocess on this machine (`torchrun --standalone --nproc-per-node N`).
    backend "k8s": one pod running torchrun with `gpus_per_pod` GPUs (PipesK8sClient, from the
    `cluster` extra). Multi-node: one pod per node with the same command plus --nnodes/--node-rank
    and a c10d rendezvous endpoint (see README); run folders must sit on a shared volume.
    """

    backend: Literal["local", "k8s"] = "local"
    nproc_per_node: int = 1
    threads_per_rank: int = 0  # 0: cores / ranks, set by the job itself
    image: str = "visionflow:latest"
    namespace: str = "default"
    gpus_per_pod: int = 0
    cpu: str = "8"
    memory: str = "32Gi"
    shared_volume_claim: str = ""

    def launch(
        self, context: dg.AssetExecutionContext, spec: JobRequest, nproc_per_node: int = 0
    ) -> dg.MaterializeResult:
        """Validate the job's whole config here (milliseconds, no torch), then run it under torchrun."""
        try:
            spec.validate()
        except VisionflowError as exc:  # a bad override or config file: named, before any process starts
            raise dg.Failure(
                description=f"the job's config is invalid, nothing was launched: {exc}", allow_retries=False
            ) from None
        n = nproc_per_node or self.nproc_per_node
        env = {"VISIONFLOW_REPORTER": "pipes", **spec.env}
        if self.threads_per_rank:
            env["VISIONFLOW_THREADS"] = str(self.threads_per_rank)
        context.log.info(f"launching {n} rank(s) ({self.backend}) into {spec.run_dir}")
        if self.backend == "k8s":
            invocation = self._launch_k8s(context, spec, n, env)
        else:
            invocation = self._launch_local(context, spec, n, env)
        result = invocation.get_materialize_result()
        check_reported(result, spec.run_dir)
        return result

    def run_step(
        self, context: dg.AssetExecutionContext, name: str, spec: Any, metadata: dict | None = None
    ) -> dg.MaterializeResult:
        """Run `python -m lightning_modules.steps NAME SPEC.json` where the compute is (this machine or a pod),
        reporting through Pipes like a training job: metadata, asset checks, or the step's error. `metadata`
        is what the asset adds from its side (links, the upstream it built on)."""
        out = Path(spec.out)
        out.mkdir(parents=True, exist_ok=True)
        spec_file = out / f"{name}.spec.json"
        spec_file.write_text(spec.model_dump_json(indent=1))
        (out / "step_error.txt").unlink(missing_ok=True)  # a retry's error must be its own
        env = {"VISIONFLOW_REPORTER": "pipes"}
        if getattr(spec, "tracking_uri", None):
            env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
        context.log.info(f"running step {name} ({self.backend}) in {out}")
        if self.backend == "k8s":
            from dagster_k8s import PipesK8sClient  # the `cluster` extra

            invocation = PipesK8sClient().run(
                context=context,
                image=self.image,
                command=step_command(name, spec_file, python="python"),
                namespace=self.namespace,
                env=env,
                base_pod_spec=self._pod_spec(),
            )
        else:
            try:
                invocation = dg.PipesSubprocessClient(cwd=str(project_root())).run(
                    context=context, command=step_command(name, spec_file), env=env
                )
            except dg.Failure:
                raise
            except Exception as exc:  # the step exited non-zero; it names its error in OUT/step_error.txt
                error = out / "step_error.txt"
                why = error.read_text() if error.is_file() else "see the step's stderr in the compute logs"
                raise dg.Failure(description=f"step {name} failed: {why}") from exc
        result = invocation.get_materialize_result()
        if not metadata:
            return result
        return dg.MaterializeResult(
            asset_key=result.asset_key,
            metadata={**(result.metadata or {}), **metadata},
            check_results=result.check_results,
            data_version=result.data_version,
            tags=result.tags,
        )

    def _launch_local(self, context, spec: JobRequest, n: int, env: dict[str, str]):
        cmd = torchrun_command(spec, nproc_per_node=n, tee=os.environ.get("VISIONFLOW_CONSOLE") != "compact")
        try:
            return dg.PipesSubprocessClient(cwd=str(project_root())).run(context=context, command=cmd, env=env)
        except dg.Failure:
            raise
        except Exception as exc:  # the job exited non-zero (Dagster's Pipes execution error is not public API)
            errors = rank_errors(spec.run_dir)
            first = next(iter(errors.values()), "no rank wrote to stderr")
            raise dg.Failure(
                description=f"training failed ({exc}); last lines of the failing rank:\n{first}",
                metadata={name: dg.MetadataValue.md(f"```\n{text}\n```") for name, text in errors.items()},
            ) from exc

    def _pod_spec(self) -> dict:
        return k8s_pod_spec(
            gpus=self.gpus_per_pod,
            cpu=self.cpu,
            memory=self.memory,
            shared_volume_claim=self.shared_volume_claim or None,
        )

    def _launch_k8s(self, context, spec: JobRequest, n: int, env: dict[str, str]):
        from dagster_k8s import PipesK8sClient  # the `cluster` extra

        cmd = torchrun_command(spec, nproc_per_node=n, python="python")
        return PipesK8sClient().run(
            context=context,
            image=self.image,
            command=cmd,
            namespace=self.namespace,
            env=env,
            base_pod_spec=self._pod_spec(),
        )


def resources_for(deployment: str | None = None) -> dict:
    """The resource set of a deployment: "local" (default) or "cluster" (VISIONFLOW_DEPLOYMENT)."""
    deployment = deployment or os.environ.get("VISIONFLOW_DEPLOYMENT", "local")
    common = {"project": ProjectResource(), "dvc": DvcResource(), "mlflow": MlflowResource()}
    if deployment == "local":
        nproc = int(os.environ.get("VISIONFLOW_NPROC", "1"))
        return {**common, "launcher": TrainingLauncher(backend="local", nproc_per_node=nproc)}
    if deployment == "cluster":
        return {
            **common,
            "launcher": TrainingLauncher(
                backend="k8s",
                image=os.environ.get("VISIONFLOW_IMAGE", "visionflow:latest"),
                namespace=os.environ.get("VISIONFLOW_NAMESPACE", "default"),
                nproc_per_node=int(os.environ.get("VISIONFLOW_GPUS_PER_POD", "1")),
                gpus_per_pod=int(os.environ.get("VISIONFLOW_GPUS_PER_POD", "1")),
                shared_volume_claim=os.environ.get("VISIONFLOW_RUNS_PVC", ""),
            ),
        }
    raise ValueError(f"VISIONFLOW_DEPLOYMENT={deployment!r}: expected 'local' or 'cluster'")


def default_resources() -> dict:
    return resources_for()
