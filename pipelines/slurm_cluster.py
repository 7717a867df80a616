"""A one-machine Slurm cluster in a folder: munged, slurmctld and slurmd from Debian's `slurm-wlm` and `munge`,
with a generated config, ports of their own and nothing written outside the folder.

It is what the tests and `bench/slurm.py` start, and a way to try the Slurm deployment on a laptop:

    python -m pipelines.slurm_cluster .slurm      # prints the SLURM_CONF to export; Ctrl-C stops it

Run as root, the daemons run jobs as any user (as on a real cluster); as another user, jobs run as that user.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
MISSING = "{name} is not installed: `make test` installs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(folder: Path, *, node: str, cpus: int, user: str) -> str:
    """slurm.conf for one node on 127.0.0.1: no cgroups, no accounting database (the launcher needs neither)."""
    return "\n".join(
        [
            "ClusterName=visionflow-local",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={folder / 'munge.socket'}",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            # a job's steps get the whole allocation: torchrun's ranks share the node's CPUs
            "SlurmdParameters=config_overrides",
            f"NodeName={node} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            "PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
            "",
        ]
    )


@contextmanager
def local_cluster(folder: Path, cpus: int | None = None, start_timeout_s: float = 60) -> Iterator[dict[str, str]]:
    """Start the cluster in `folder` (created); yields the environment its clients need (SLURM_CONF)."""
    for name in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch"):
        if not shutil.which(name) and not Path("/usr/sbin", name).exists():
            raise RuntimeError(MISSING.format(name=name))
    folder = folder.resolve()
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # munged refuses a key in a folder others can write
    key = folder / "munge.key"
    if not key.exists():
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o400)
    conf = folder / "slurm.conf"
    conf.write_text(config(folder, node="local1", cpus=cpus or os.cpu_count() or 1, user=getpass.getuser()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = folder / "log"
    munged = ["munged", "--foreground", "--force", f"--socket={folder / 'munge.socket'}", f"--key-file={key}"]
    files = {"pid": "munged.pid", "log": "log/munged.log", "seed": "munged.seed"}
    munged += [f"--{kind}-file={folder / name}" for kind, name in files.items()]
    with ExitStack() as stack:
        for cmd in (munged, ["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", "local1"]):
            out = stack.enter_context((logs / f"{cmd[0]}.out").open("w"))
            proc = subprocess.Popen(_sbin(cmd), env=env, stdout=out, stderr=subprocess.STDOUT)
            stack.callback(_stop, proc)
            time.sleep(0.5 if cmd[0] == "munged" else 0)
        _wait_idle(env, start_timeout_s, logs)
        stack.callback(_cancel_all, env)
        yield {"SLURM_CONF": str(conf)}


def _sbin(cmd: list[str]) -> list[str]:
    return [shutil.which(cmd[0]) or f"/usr/sbin/{cmd[0]}", *cmd[1:]]


def _wait_idle(env: dict[str, str], timeout_s: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True, text=True)
        if done.stdout.strip() == "idle":
            return
        time.sleep(0.5)
    tails = {p.name: p.read_text(errors="replace")[-800:] for p in sorted(logs.iterdir())}
    raise RuntimeError(f"the local Slurm node never became idle; daemon logs:\n{tails}")


def _cancel_all(env: dict[str, str]) -> None:
    subprocess.run(["scancel", "--user", getpass.getuser()], env=env, capture_output=True)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cpus", type=int, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the daemons too, like Ctrl-C
    with local_cluster(args.folder, args.cpus) as env:
        print(f"Slurm is up. In another shell: export SLURM_CONF={env['SLURM_CONF']}  (Ctrl-C here stops it)")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
