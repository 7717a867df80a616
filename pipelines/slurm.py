"""The Slurm deployment (VISIONFLOW_DEPLOYMENT=slurm): every compute step is a Slurm batch job.

A training step becomes `srun` with one task per node, each running torchrun for its node: `--nnodes`
from SLURM_NNODES, the node rank from SLURM_NODEID, c10d rendezvous on the allocation's first node. Other
steps (evaluation, reports) run as one task. Dagster Pipes needs no network between the nodes and Dagster:
the context travels in the job's environment (sbatch exports it) and rank 0 writes its messages to a file
in the step's folder, which sits on the shared filesystem with the project (the project folder must be
mounted at the same path on every node, and so must the venv: `python` is this interpreter).

The step waits on the Slurm job: a failed or killed job fails the step with the failing rank's stderr tail,
and a Dagster retry submits again, resuming from last.ckpt in the same run folder. Interrupting the step
(cancelling the Dagster run, or Ctrl-C) cancels the Slurm job with `scancel`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from lightning_modules.paths import project_root
from pipelines.launcher import TrainingLauncher

# The torchrun flags of one node of the allocation, expanded by each srun task's shell.
NODE_RENDEZVOUS = (
    '--nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" --rdzv-backend c10d '
    '--rdzv-id "$SLURM_JOB_ID" --rdzv-endpoint "$VISIONFLOW_RDZV_ENDPOINT"'
)
# squeue lists a job while it is pending, running or completing; then it is gone.
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}


class SlurmError(RuntimeError):
    """A Slurm command failed, or the job ended without success."""


class SlurmLauncher(TrainingLauncher):
    """Submits each step with `sbatch` to the cluster this machine is a client of (or SLURM_CONF's)."""

    nodes: int = 1  # training steps; other steps take one node
    partition: str = ""  # empty: the cluster's default partition
    cpus_per_task: int = 0  # per node (one task per node); 0: the partition's default
    gpus_per_node: int = 0
    time_limit: str = ""  # sbatch --time, e.g. "04:00:00"; empty: the partition's limit
    extra_sbatch_args: list[str] = []
    poll_seconds: float = 1.0
    # Batch scripts, Slurm's output, Pipes messages: on a filesystem every node mounts. Empty: <project>/runs/slurm
    shared_folder: str = ""

    @property
    def backend(self) -> str:
        return "slurm"

    @property
    def python(self) -> str:
        return sys.executable

    def _run(self, context, command, env, on_error):
        folder = step_folder(context, Path(self.shared_folder or project_root() / "runs" / "slurm"))
        script = folder / "job.sh"
        # A torchrun command (a training step) spans the nodes; any other step is one process on one node.
        training = command[1:3] == ["-m", "torch.distributed.run"]
        script.write_text(batch_script(command, folder, training=training))
        messages = folder / "pipes_messages.jsonl"
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesEnvContextInjector(),
            message_reader=dg.PipesFileMessageReader(str(messages)),
        ) as session:
            job_env = {**os.environ, **env, **session.get_bootstrap_env_vars()}
            args = self.sbatch_args(f"visionflow-{context.asset_key.to_user_string()}", folder, training)
            try:
                job_id = submit(script, args, job_env)
            except SlurmError as exc:  # a bad partition, time limit or GPU count: the same request fails again
                raise dg.Failure(description=str(exc), allow_retries=False) from None
            context.log.info(f"Slurm job {job_id} submitted ({script})")
            try:
                wait_for(job_id, folder, self.poll_seconds, context.log.info)
            except SlurmError as exc:
                raise on_error(exc) from None
            except BaseException:  # the Dagster run was cancelled, or Ctrl-C: the Slurm job goes too
                cancel(job_id)
                context.log.warning(f"Slurm job {job_id} cancelled")
                raise
        return dg.PipesClientCompletedInvocation(session)

    def sbatch_args(self, name: str, folder: Path, training: bool) -> list[str]:
        """One task per node; training takes `nodes` nodes, any other step one."""
        nodes = self.nodes if training else 1
        args = [
            f"--job-name={name}",
            f"--nodes={nodes}",
            "--ntasks-per-node=1",
            f"--output={folder / 'slurm-%j.out'}",
            f"--chdir={project_root()}",
            "--export=ALL",
        ]
        if self.partition:
            args.append(f"--partition={self.partition}")
        if self.cpus_per_task:
            args.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.gpus_per_node:
            args.append(f"--gpus-per-node={self.gpus_per_node}")
        if self.time_limit:
            args.append(f"--time={self.time_limit}")
        return args + list(self.extra_sbatch_args)


def step_folder(context: dg.AssetExecutionContext, shared: Path) -> Path:
    """SHARED/<dagster run id>/<asset>/<attempt id>/: the batch script, Slurm's output, Pipes messages."""
    folder = shared / context.run.run_id / context.asset_key.to_python_identifier() / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def batch_script(command: list[str], folder: Path, *, training: bool) -> str:
    """The sbatch script. Training: one srun task per node runs torchrun for that node. It writes its exit
    status to a file, so the result is known without Slurm's accounting database."""
    if training:
        if "--standalone" not in command:
            raise ValueError(f"expected a single-node torchrun command, got {command}")
        at = command.index("--standalone")
        node = f"{shlex.join(command[:at])} {NODE_RENDEZVOUS} {shlex.join(command[at + 1 :])}"
        run = f"srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c {shlex.quote('exec ' + node)}"
    else:
        run = shlex.join(command)
    return "\n".join(
        [
            "#!/bin/bash",
            "# written by visionflow's SlurmLauncher (pipelines/slurm.py)",
            'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            # the first node's address as Slurm reaches it: a node's name need not be a resolvable host name
            'addr=$(scontrol show node "$head" | sed -n "s/.*NodeAddr=\\([^ ]*\\).*/\\1/p")',
            # a port per job, so that two jobs sharing a first node do not meet at one rendezvous
            'export VISIONFLOW_RDZV_ENDPOINT="${addr:-$head}:$((29500 + SLURM_JOB_ID % 20000))"',
            run,
            "status=$?",
            f'echo "$status" > {shlex.quote(str(folder / "exit_status"))}',
            'exit "$status"',
            "",
        ]
    )


def _slurm(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)
    except FileNotFoundError:
        raise SlurmError(f"`{args[0]}` is not installed: the Slurm deployment needs Slurm's client commands") from None


def submit(script: Path, args: list[str], env: dict[str, str]) -> str:
    done = _slurm(["sbatch", "--parsable", *args, str(script)], env=env)
    if done.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def state(job_id: str) -> str | None:
    """The job's state while squeue lists it, else None (finished and gone from the queue)."""
    done = _slurm(["squeue", "--noheader", "--jobs", job_id, "--format=%T"])
    text = done.stdout.strip()
    if done.returncode != 0 or not text:
        return None  # squeue errors on a job id it has already forgotten
    return text.splitlines()[0]


def wait_for(job_id: str, folder: Path, poll_seconds: float, log: Callable[[str], None]) -> None:
    """Poll until the job left the queue; raise SlurmError unless its batch script exited 0."""
    seen = None
    while (now := state(job_id)) is not None and now in ACTIVE:
        if now != seen:
            log(f"Slurm job {job_id}: {now}")
            seen = now
        time.sleep(poll_seconds)
    status = folder / "exit_status"
    if status.is_file() and status.read_text().strip() == "0":
        return
    why = f"exit status {status.read_text().strip()}" if status.is_file() else f"ended {final_state(job_id)}"
    raise SlurmError(f"Slurm job {job_id} {why}; its output:\n{tail(folder / f'slurm-{job_id}.out')}")


def final_state(job_id: str) -> str:
    """CANCELLED, TIMEOUT, NODE_FAIL...: what `scontrol` still knows of a job that wrote no exit status."""
    done = _slurm(["scontrol", "show", "job", job_id, "--oneliner"])
    for field in done.stdout.split():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    return "without an exit status (killed)"


def cancel(job_id: str) -> None:
    _slurm(["scancel", job_id])


def tail(path: Path, lines: int = 20) -> str:
    if not path.is_file():
        return "(no output file)"
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
