"""Rank helpers, and real multi-process runs: torchrun DDP on 2 CPU ranks and a simulated 2-node job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_modules import reporting
from lightning_modules.training import distributed as dist

pytestmark = pytest.mark.slow  # torchrun with 2 ranks and 2 simulated nodes

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke-classify.yaml"
TRAIN_SAMPLES = 64  # tiny_prepared_imagenet


def _clear_rank_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (
        "RANK",
        "LOCAL_RANK",
        "NODE_RANK",
        "GROUP_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "TORCHELASTIC_RUN_ID",
        "VISIONFLOW_THREADS",
        "NUM_NODES",
    ):
        monkeypatch.delenv(k, raising=False)


def test_global_rank_from_torchrun_or_lightning_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_rank_env(monkeypatch)
    assert dist.global_rank() == 0 and dist.is_global_zero() and not dist.under_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's launcher: LOCAL_RANK / NODE_RANK only
    assert dist.global_rank() == 1
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert dist.global_rank() != 0  # rank 0 of node 1 is not global rank 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert dist.global_rank() == 2
    monkeypatch.setenv("RANK", "3")  # torchrun's RANK wins
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    info = dist.world_info()
    assert info.rank == 3 and info.world_size == 4 and info.local_world_size == 2 and info.num_nodes == 2
    assert info.torchrun and not dist.is_global_zero()


def test_effective_batch_lr_scaling_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_rank_env(monkeypatch)
    assert dist.effective_batch(64, devices=2, num_nodes=2, accumulate=2) == 512
    assert dist.scaled_lr(0.1, 512, 256) == pytest.approx(0.2)
    assert dist.scaled_lr(0.1, 512, None) == 0.1
    monkeypatch.setattr(dist, "cpu_count", lambda: 16)
    assert dist.threads_per_rank(4) == 4 and dist.threads_per_rank(32) == 1
    monkeypatch.setenv("VISIONFLOW_THREADS", "3")
    assert dist.threads_per_rank(4) == 3


def test_only_global_rank_zero_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_rank_env(monkeypatch)
    monkeypatch.setenv("RANK", "1")
    reporting.make_reporter(tmp_path).finish({"status": "finished"})
    assert not (tmp_path / "result.json").exists()
    monkeypatch.setenv("RANK", "0")
    reporting.make_reporter(tmp_path).finish({"status": "finished"})
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "finished"


def test_devices_without_torchrun_relaunches_under_torchrun(
    tiny_prepared_imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """devices=2 outside torchrun: the job re-runs itself as `torchrun --standalone` (no Lightning relaunch)."""
    from lightning_modules import train

    _clear_rank_env(monkeypatch)
    seen = {}

    def fake_run(cmd, env=None):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(train.subprocess, "run", fake_run)
    rc = train.main(
        [
            str(SMOKE),
            "--data",
            str(tiny_prepared_imagenet),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "trainer.devices=2",
            "--set",
            "trainer.fast_dev_run=true",
        ]
    )
    assert rc == 0
    cmd = seen["cmd"]
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == "lightning_modules.train" and "trainer.devices=2" in cmd
    rc = train.main(
        [
            str(SMOKE),
            "--data",
            str(tiny_prepared_imagenet),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "trainer.num_nodes=2",
        ]
    )
    assert rc == 2  # num_nodes > 1 needs one torchrun per node


# -- real processes ---------------------------------------------------------------------------------


def _env(threads: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update({"MPLBACKEND": "Agg", "DATA_OPTIMIZER_CACHE_FOLDER": str(REPO / ".cache" / "litdata")})
    if threads:
        env["VISIONFLOW_THREADS"] = str(threads)
    return env


def _job_args(data: Path, out: Path, uri: str, experiment: str, batch: int, epochs: int) -> list[str]:
    return [
        str(SMOKE),
        "--data",
        str(data),
        "--out",
        str(out),
        "--set",
        f"data.batch_size={batch}",
        "--set",
        "data.num_workers=0",
        "--set",
        f"trainer.max_epochs={epochs}",
        "--set",
        "trainer.grad_monitor_every_n_steps=2",
        "--set",
        f"tracking.tracking_uri={uri}",
        "--set",
        f"tracking.experiment={experiment}",
    ]


def _check_one_mlflow_run(uri: str, experiment: str, out: Path, steps: int) -> dict:
    from mlflow.tracking import MlflowClient

    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["global_step"] == steps
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, "every rank but 0 must stay silent"
    run = runs[0]
    assert run.info.run_id == result["mlflow_run_id"] and run.info.status == "FINISHED"
    assert {"train/loss", "val/loss", "val/acc1", "val/acc5"} <= set(run.data.metrics)
    return run


def test_torchrun_ddp_two_ranks_logs_one_mlflow_run(
    tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    # batch 12: more than each rank's share of the 16 val images (8), which once left rank 0 with no val batch
    out, batch, epochs = tmp_path / "ddp", 12, 2
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "lightning_modules.train",
        *_job_args(tiny_prepared_imagenet, out, mlflow_uri, "test-ddp", batch, epochs),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    steps = epochs * ((TRAIN_SAMPLES // batch) // 2)  # litdata deals whole batches to the ranks
    run = _check_one_mlflow_run(mlflow_uri, "test-ddp", out, steps)
    assert run.data.params["devices"] == "2" and run.data.params["effective_batch"] == str(2 * batch)
    # validation split between the ranks still covers every val image exactly once
    val_images = json.loads((tiny_prepared_imagenet / "manifest.json").read_text())["totals"]["val"]
    assert run.data.metrics["val/images"] == val_images
    assert run.data.params["threads_per_rank"] == str(max(1, dist.cpu_count() // 2))
    # the default compression, resolved for CPU ranks, is what the run records
    assert run.data.params["trainer.ddp_compression"] == "auto" and run.data.params["ddp_compression"] == "bf16"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_simulated_nodes_log_one_mlflow_run(tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str) -> None:
    out, batch, epochs = tmp_path / "nodes", 8, 2
    port = _free_port()
    args = _job_args(tiny_prepared_imagenet, out, mlflow_uri, "test-nodes", batch, epochs)
    # bf16 gradient compression: the setting meant for slow links between nodes, run for real here.
    args += ["--set", "trainer.num_nodes=2", "--set", "trainer.ddp_compression=bf16"]
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "--nproc-per-node",
            "1",
            "-m",
            "lightning_modules.train",
            *args,
        ]
        # Both "nodes" share this machine's cores: one thread each (see FIELD-NOTES).
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=_env(threads=1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    steps = epochs * TRAIN_SAMPLES // (2 * batch)
    run = _check_one_mlflow_run(mlflow_uri, "test-nodes", out, steps)
    assert run.data.params["num_nodes"] == "2" and run.data.params["devices"] == "1"
    assert run.data.params["trainer.ddp_compression"] == "bf16" and run.data.params["ddp_compression"] == "bf16"
    assert run.data.params["effective_batch"] == str(2 * batch)


def test_inside_a_slurm_allocation_the_ranks_come_from_torchrun_not_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Slurm deployment runs torchrun under srun: every rank of a node sees SLURM_PROCID=0. The trainer's
    cluster environment must be torchrun's, whatever Lightning would detect."""
    from pytorch_lightning.plugins.environments import LightningEnvironment, TorchElasticEnvironment

    from lightning_modules.training.trainer import cluster_environment

    _clear_rank_env(monkeypatch)
    slurm = {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    slurm |= {"SLURM_JOB_NAME": "visionflow-pretrained_backbone", "SLURM_NNODES": "1", "SLURM_JOB_ID": "7"}
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"}
    for key, value in {**slurm, **torchrun, "TORCHELASTIC_RUN_ID": "7", "MASTER_ADDR": "n1"}.items():
        monkeypatch.setenv(key, value)
    env = cluster_environment(dist.world_info())
    assert isinstance(env, TorchElasticEnvironment)
    assert (env.global_rank(), env.local_rank(), env.world_size()) == (1, 1, 2)
    for key in [*torchrun, "TORCHELASTIC_RUN_ID"]:  # srun without torchrun: one process, Slurm's ranks ignored
        monkeypatch.delenv(key)
    assert isinstance(cluster_environment(dist.world_info()), LightningEnvironment)


@pytest.mark.parametrize("compression", ["none", "bf16", "fp16"])
def test_ddp_compression_really_rounds_the_all_reduced_gradients_on_cpu(compression: str, tmp_path: Path) -> None:
    """Lightning registers `ddp_comm_hook` on CUDA only; on CPU ranks the setting was silently dropped.
    After a real 2-rank gloo step, the gradients must be 16-bit values exactly when compression is on."""
    out = tmp_path / "probe.json"
    probe = Path(__file__).with_name("ddp_grad_probe.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(probe)]
    env = {**_env(threads=1), "PYTHONPATH": str(REPO)}
    done = subprocess.run([*cmd, compression, str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(out.read_text())["all_values_of"]
    # (a bf16 value in fp16's range is an fp16 value too: bf16 has the fewer mantissa bits)
    assert found["bf16"] == (compression == "bf16")
    assert found["fp16"] == (compression != "none")


def test_auto_compression_is_bf16_on_cpu_ranks_and_none_on_cuda() -> None:
    from lightning_modules.training.trainer import ddp_compression

    assert ddp_compression("auto", "cpu") == "bf16"
    assert ddp_compression("auto", "gpu") == "none" and ddp_compression("auto", "cuda") == "none"
    assert ddp_compression("none", "cpu") == "none" and ddp_compression("fp16", "cuda") == "fp16"
