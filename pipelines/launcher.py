"""Launching a Lightning job from an asset: torchrun under Dagster Pipes, locally or on Kubernetes.

The job (`python -m lightning_modules.train`) is the same program a user runs by hand. Every
torchrun rank inherits the Pipes environment, and only global rank 0 opens Pipes (the job's
"pipes" reporter), so metrics and the checkpoint path arrive once, as the asset's metadata.
Lightning's own DDP launcher is never used: it re-runs the calling program, which here is Dagster.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg

from lightning_modules.contract import JobRequest, missing_keys


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


def k8s_pod_spec(*, gpus: int, cpu: str, memory: str, shared_volume_claim: str | None) -> dict:
    """Pod spec for one torchrun pod with `gpus` devices; the run folder sits on a shared volume."""
    resources = {"limits": {"cpu": cpu, "memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    container: dict = {"resources": resources}
    spec: dict = {"containers": [container], "restart_policy": "Never"}
    if shared_volume_claim:
        container["volume_mounts"] = [{"name": "runs", "mount_path": "/runs"}]
        # torch's NCCL needs more shared memory than a container's default 64 MB.
        container["volume_mounts"].append({"name": "dshm", "mount_path": "/dev/shm"})
        spec["volumes"] = [
            {"name": "runs", "persistent_volume_claim": {"claim_name": shared_volume_claim}},
            {"name": "dshm", "empty_dir": {"medium": "Memory"}},
        ]
    return spec
