"""The launcher's commands and resource sets (the launch itself runs for real in test_chain.py)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from lightning_modules.contract import JobRequest
from pipelines.k8s import K8sLauncher
from pipelines.launcher import LocalLauncher, TrainingLauncher, rank_errors, torchrun_command
from pipelines.resources import resources_for


def _spec(tmp_path: Path) -> JobRequest:
    return JobRequest(
        configs=("c.yaml",), data=tmp_path / "prep", run_dir=tmp_path / "run", overrides=("optim.lr=0.1",)
    )


def test_single_node_torchrun_is_standalone_and_runs_the_job_module(tmp_path: Path) -> None:
    cmd = torchrun_command(_spec(tmp_path), nproc_per_node=2, python="py")
    assert cmd[:5] == ["py", "-m", "torch.distributed.run", "--nproc-per-node", "2"] and "--standalone" in cmd
    job = cmd[cmd.index("lightning_modules.train") - 1 :]
    assert job == [
        "-m",
        "lightning_modules.train",
        "c.yaml",
        "--data",
        str(tmp_path / "prep"),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "optim.lr=0.1",
    ]
    assert cmd[cmd.index("--log-dir") + 1] == str(tmp_path / "run" / "torchrun")


def test_multi_node_uses_a_rendezvous_endpoint(tmp_path: Path) -> None:
    cmd = torchrun_command(_spec(tmp_path), nproc_per_node=8, nnodes=4, node_rank=3, rdzv_endpoint="head:29400")
    assert "--standalone" not in cmd
    for flag, value in (
        ("--nnodes", "4"),
        ("--node-rank", "3"),
        ("--rdzv-endpoint", "head:29400"),
        ("--rdzv-backend", "c10d"),
    ):
        assert cmd[cmd.index(flag) + 1] == value
    with pytest.raises(dg.DagsterInvalidConfigError):
        torchrun_command(_spec(tmp_path), nproc_per_node=1, nnodes=2)


def test_rank_errors_reads_the_failing_ranks_stderr(tmp_path: Path) -> None:
    log = tmp_path / "run" / "torchrun" / "abc" / "attempt_0" / "1" / "stderr.log"
    log.parent.mkdir(parents=True)
    log.write_text("line\n" * 40 + "RuntimeError: rank 1 broke\n")
    errors = rank_errors(tmp_path / "run")
    assert list(errors) == ["local rank 1"] and errors["local rank 1"].endswith("RuntimeError: rank 1 broke")


def test_resource_sets_switch_by_deployment(monkeypatch) -> None:
    local = resources_for("local")["launcher"]
    assert isinstance(local, LocalLauncher) and isinstance(local, TrainingLauncher) and local.backend == "local"
    monkeypatch.setenv("VISIONFLOW_GPUS_PER_POD", "8")
    monkeypatch.setenv("VISIONFLOW_IMAGE", "registry/visionflow:1")
    cluster = resources_for("cluster")["launcher"]
    assert cluster.backend == "k8s" and cluster.gpus_per_pod == 8 and cluster.image == "registry/visionflow:1"
    with pytest.raises(ValueError, match="VISIONFLOW_DEPLOYMENT"):
        resources_for("moon")


def test_the_launchpad_shows_only_the_settings_of_the_deployment_in_use() -> None:
    """The resource's fields are the config the Launchpad offers: no pod image or memory on a laptop."""
    pod_settings = {"image", "namespace", "gpus_per_pod", "cpu", "memory", "shared_volume_claim"}
    local = resources_for("local")["launcher"]
    assert set(type(local).model_fields) == {
        "nproc_per_node",
        "threads_per_rank",
    }
    cluster = resources_for("cluster")["launcher"]
    assert isinstance(cluster, K8sLauncher)
    assert pod_settings <= set(type(cluster).model_fields)


def test_a_bad_override_fails_in_dagster_before_anything_starts(tmp_path: Path) -> None:
    """The asset validates the whole job config first: no MLflow run, no torchrun, the field named."""
    from pipelines.assets.training import pretrained_backbone
    from pipelines.resources import DvcResource, MlflowResource, ProjectResource

    resources = {
        "project": ProjectResource(root=str(tmp_path)),
        "dvc": DvcResource(root=str(tmp_path)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        "launcher": LocalLauncher(),
    }
    config = {
        "config_file": str(Path(__file__).parents[2] / "configs" / "pretrain-cpu.yaml"),
        "overrides": ["optim.lr=nan", "trainer.max_epochs=1"],
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [pretrained_backbone],
            partition_key="resnet18",
            instance=instance,
            resources=resources,
            run_config={"ops": {"pretrained_backbone": {"config": config}}},
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "optim.lr=nan must be a finite number" in failure.step_failure_data.error.message
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.rglob("torchrun"))


def test_a_slurm_training_job_spans_its_nodes_with_one_torchrun_each(tmp_path: Path) -> None:
    """What sbatch gets for 2 nodes x 4 GPUs (the real submission is tested on a real cluster in test_slurm.py)."""
    from pipelines.slurm import SlurmLauncher, batch_script

    launcher = SlurmLauncher(nodes=2, nproc_per_node=4, gpus_per_node=4, partition="gpu", time_limit="02:00:00")
    args = launcher.sbatch_args("visionflow-pretrained_backbone", tmp_path, training=True)
    assert {"--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--partition=gpu", "--time=02:00:00"} <= set(args)
    assert "--nodes=1" in launcher.sbatch_args("visionflow-classification_evaluation", tmp_path, training=False)
    script = batch_script(torchrun_command(_spec(tmp_path), nproc_per_node=4, python="py"), tmp_path, training=True)
    node = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--standalone" not in node and "--nproc-per-node 4" in node
    assert '--nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID"' in node and "--rdzv-backend c10d" in node
    assert "NodeAddr" in script and "VISIONFLOW_RDZV_ENDPOINT" in script
    # any other step is one process, without srun or torchrun
    step = batch_script(["py", "-m", "lightning_modules.steps", "evaluation", "spec.json"], tmp_path, training=False)
    assert "py -m lightning_modules.steps evaluation spec.json" in step and "srun" not in step
