"""Launching a Lightning job from an asset: torchrun under Dagster Pipes, locally, on Slurm or on Kubernetes.

The launcher resources: `TrainingLauncher` is what assets ask for; each deployment binds its own kind,
`LocalLauncher` (subprocesses on this machine, here), `SlurmLauncher` (pipelines/slurm.py) or `K8sLauncher`
(pods, pipelines/k8s.py), so the Launchpad shows only the settings of the deployment in use. The command
builders below them are shared.

The job (`python -m lightning_modules.train`) is the same program a user runs by hand. Every
torchrun rank inherits the Pipes environment, and only global rank 0 opens Pipes (the job's
"pipes" reporter), so metrics and the checkpoint path arrive once, as the asset's metadata.
Lightning's own DDP launcher is never used: it re-runs the calling program, which here is Dagster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from lightning_modules.contract import JobRequest, missing_keys
from lightning_modules.errors import VisionflowError
from lightning_modules.paths import project_root


class TrainingLauncher(dg.ConfigurableResource):
    """Runs `python -m lightning_modules.train` under torchrun, and the other compute steps, through Pipes.

    Subclasses say where the processes run (`_run`) and how many ranks a node has (`nproc_per_node`)."""

    nproc_per_node: int = 1
    threads_per_rank: int = 0  # 0: cores / ranks, set by the job itself

    @property
    def backend(self) -> str:
        raise NotImplementedError

    @property
    def python(self) -> str:
        """The interpreter on the compute side."""
        return "python"

    def _run(
        self, context: dg.AssetExecutionContext, command: list[str], env: dict[str, str], on_error: Callable
    ) -> dg.PipesClientCompletedInvocation:
        raise NotImplementedError

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
        # make run's compact console sends the ranks' output to files only
        tee = os.environ.get("VISIONFLOW_CONSOLE") != "compact"
        cmd = torchrun_command(spec, nproc_per_node=n, python=self.python, tee=tee)
        result = self._run(context, cmd, env, lambda exc: _training_failure(exc, spec.run_dir)).get_materialize_result()
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
        command = step_command(name, spec_file, python=self.python)
        result = self._run(context, command, env, lambda exc: _step_failure(exc, name, out)).get_materialize_result()
        if not metadata:
            return result
        return dg.MaterializeResult(
            asset_key=result.asset_key,
            metadata={**(result.metadata or {}), **metadata},
            check_results=result.check_results,
            data_version=result.data_version,
            tags=result.tags,
        )


class LocalLauncher(TrainingLauncher):
    """Subprocesses on this machine: `torchrun --standalone --nproc-per-node N` for training."""

    @property
    def backend(self) -> str:
        return "local"

    @property
    def python(self) -> str:
        return sys.executable

    def _run(self, context, command, env, on_error):
        try:
            return dg.PipesSubprocessClient(cwd=str(project_root())).run(context=context, command=command, env=env)
        except dg.Failure:
            raise
        except Exception as exc:  # the process exited non-zero (Dagster's Pipes execution error is not public API)
            raise on_error(exc) from exc


def _training_failure(exc: Exception, run_dir: Path) -> dg.Failure:
    errors = rank_errors(run_dir)
    first = next(iter(errors.values()), "no rank wrote to stderr")
    return dg.Failure(
        description=f"training failed ({exc}); last lines of the failing rank:\n{first}",
        metadata={name: dg.MetadataValue.md(f"```\n{text}\n```") for name, text in errors.items()},
    )


def _step_failure(exc: Exception, name: str, out: Path) -> dg.Failure:
    """The step exited non-zero; it names its error in OUT/step_error.txt."""
    error = out / "step_error.txt"
    why = error.read_text() if error.is_file() else f"{exc} (the step's stderr is in the compute logs)"
    return dg.Failure(description=f"step {name} failed: {why}")


def torchrun_command(
    spec: JobRequest,
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    python: str = sys.executable,
    tee: bool = True,
) -> list[str]:
    """torchrun for one node: `--standalone` on a single node (a free port per job), c10d rendezvous across nodes."""
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node)]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise dg.DagsterInvalidConfigError(
                "multi-node training needs rdzv_endpoint (host:port of node 0)", [], None
            )
        cmd += [
            "--nnodes",
            str(nnodes),
            "--node-rank",
            str(node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            rdzv_endpoint,
        ]
    # Each rank's stdout/stderr also go to files, so a failing rank's error can be shown in Dagster;
    # `tee=False` (make run's compact console) sends them to the files only.
    cmd += ["--log-dir", str(spec.run_dir / "torchrun"), "--tee" if tee else "--redirects", "3"]
    return cmd + spec.module_args()


def step_command(name: str, spec_file: Path, python: str = sys.executable) -> list[str]:
    """A compute step other than training (evaluation, registration, the transfer report): one process."""
    return [python, "-m", "lightning_modules.steps", name, str(spec_file)]


def rank_errors(run_dir: Path, lines: int = 25) -> dict[str, str]:
    """The tail of every rank's stderr from the latest torchrun attempt (rank name -> text)."""
    logs = sorted((run_dir / "torchrun").glob("*/attempt_*/*/stderr.log"), key=lambda p: p.stat().st_mtime)
    out: dict[str, str] = {}
    for log in logs:
        text = log.read_text(errors="replace").strip().splitlines()
        if text:
            out[f"local rank {log.parent.name}"] = "\n".join(text[-lines:])
    return out


def check_reported(result: dg.MaterializeResult, run_dir: Path) -> None:
    missing = missing_keys(result.metadata or {})
    if missing:
        raise dg.Failure(
            description=f"the training job in {run_dir} reported no {', '.join(missing)} through Pipes "
            "(did rank 0 open Pipes? is VISIONFLOW_REPORTER=pipes set?)"
        )
