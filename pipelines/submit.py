"""Submitting runs the way the UI does: `dagster job launch` queues a run of the workspace's code location,
and the daemon starts it (the instance's queued run coordinator, so pools and run limits apply).

Runs made this way carry their code location, so the Overview timeline and the job pages list them; runs
executed in process (`execute_in_process`) have none and the timeline leaves them out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import dagster as dg
from filelock import FileLock, Timeout

FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def _cli(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def daemon_lock() -> FileLock:
    """Held by whichever of our commands runs the instance's daemon (`make ui`, or `make run` without it):
    two daemons on one instance would both dequeue runs. A heartbeat cannot tell: it outlives a daemon by
    minutes. The lock dies with its process."""
    return FileLock(str(Path(os.environ["DAGSTER_HOME"]) / "daemon.lock"))


@contextmanager
def daemon(root: Path, log: IO[str]) -> Iterator[None]:
    """A Dagster daemon for the duration of the block, unless `make ui` runs one; its output goes to `log`."""
    lock = daemon_lock()
    try:
        lock.acquire(timeout=0)
    except Timeout:  # `make ui` is up: its daemon starts our runs
        yield
        return
    proc = subprocess.Popen(
        [_cli("dagster-daemon"), "run", "-w", str(root / "workspace.yaml")],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        lock.release()


def launch(
    root: Path,
    job: str,
    partition: str | None = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Queue a run of `job` (one partition of it) on the instance; returns its run id."""
    run_id = str(uuid.uuid4())
    cmd = [_cli("dagster"), "job", "launch", "-w", str(root / "workspace.yaml"), "-j", job, "--run-id", run_id]
    tags = {**(tags or {}), **({"dagster/partition": partition} if partition else {})}
    if tags:
        cmd += ["--tags", json.dumps(tags)]
    if run_config:
        cmd += ["--config-json", json.dumps(run_config)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not launch the {job} job:\n{done.stderr.strip()[-2000:]}")
    return run_id


def wait(instance: dg.DagsterInstance, run_id: str, queued_patience_s: float = 300) -> dg.DagsterRunStatus:
    """Block until the run has finished; a run never dequeued within `queued_patience_s` is an error."""
    queued_since = time.monotonic()
    while True:
        run = instance.get_run_by_id(run_id)
        status = run.status if run else dg.DagsterRunStatus.QUEUED
        if status in FINISHED:
            return status
        if status != dg.DagsterRunStatus.QUEUED:
            queued_since = time.monotonic()
        elif time.monotonic() - queued_since > queued_patience_s:
            raise RuntimeError(
                f"run {run_id} stayed queued for {queued_patience_s:.0f} s: is the Dagster daemon running "
                "and is another run holding the pool? (`make ui` shows the queue)"
            )
        time.sleep(1.0)
