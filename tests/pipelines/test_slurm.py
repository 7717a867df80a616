"""The Slurm deployment on a real Slurm cluster: munged + slurmctld + slurmd (Debian's slurm-wlm and munge,
which `make test` installs) started on localhost in a temp folder by pipelines/slurm_cluster.py.

The chain's first stages (the prep, then pretraining with 2 torchrun ranks) are materialized through
`sbatch`; a rank killed mid-run fails its Slurm job, Dagster retries the step and it resumes from
last.ckpt; interrupting the Dagster run cancels the Slurm job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipelines import slurm
from pipelines.assets.data import prepared_imagenet
from pipelines.assets.training import pretrained_backbone
from pipelines.resources import DvcResource, MlflowResource, ProjectResource
from pipelines.slurm import SlurmLauncher
from pipelines.slurm_cluster import local_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(classes=4, per_class=24, val_per_class=6, transfer_classes=2, transfer_per_class=4)
SMALL_NET = ["data.image_size=32", "model.width=0.25", "data.batch_size=16", "data.num_workers=0"]
PREP = {"config": {"image_size": 32, "workers": 1}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory.mktemp("slurm")) as env, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", env["SLURM_CONF"])  # sbatch, squeue and scancel find the cluster
        yield env


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, versioned_project) -> Path:
    return versioned_project(tmp_path_factory.mktemp("project"), seed=3, **TINY)


def _resources(root: Path, **launcher) -> dict:
    return {
        "project": ProjectResource(root=str(root)),
        "dvc": DvcResource(root=str(root)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"),
        "launcher": SlurmLauncher(shared_folder=str(root / "slurm"), poll_seconds=0.25, **launcher),
    }


def _prepared(root: Path) -> Path:
    """The project with its classification set prepared (through Slurm too), whichever test runs first."""
    if not (root / "prepared" / "imagenet" / "manifest.json").is_file():
        dg.materialize([prepared_imagenet], resources=_resources(root), run_config={"ops": {"prepared_imagenet": PREP}})
    return root


def _pretrain(epochs: int, *extra: str) -> dict:
    overrides = [f"trainer.max_epochs={epochs}", *SMALL_NET, *extra]
    return {"config": {"config_file": str(ROOT / "configs" / "smoke-classify.yaml"), "overrides": overrides}}


def _attempts(root: Path, asset: str) -> list[Path]:
    """The step folders of an asset's Slurm jobs, oldest first."""
    return sorted((root / "slurm").glob(f"*/{asset}/*"), key=lambda p: (p / "job.sh").stat().st_mtime)


def _job_id(folder: Path) -> str:
    return next(folder.glob("slurm-*.out")).stem.removeprefix("slurm-")


def test_the_prep_and_two_rank_pretraining_materialize_through_slurm(cluster, project: Path) -> None:
    root = project
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [prepared_imagenet, pretrained_backbone],
            partition_key="resnet18",
            instance=instance,
            resources=_resources(root, nproc_per_node=2),
            run_config={"ops": {"prepared_imagenet": PREP, "pretrained_backbone": _pretrain(2)}},
        )
    assert result.success
    # Both steps ran as Slurm jobs that finished, each with its own folder, script and output.
    for asset in ("prepared_imagenet", "pretrained_backbone"):
        (folder,) = _attempts(root, asset)
        assert (folder / "exit_status").read_text().strip() == "0"
        assert "JobState=COMPLETED" in slurm._slurm(["scontrol", "show", "job", _job_id(folder)]).stdout
    script = (_attempts(root, "pretrained_backbone")[0] / "job.sh").read_text()
    assert "srun" in script and '--nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID"' in script
    # Two torchrun ranks trained; rank 0 alone reported through Pipes (a file on the shared path).
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["pretrained_backbone"]]
    assert len(events) == 1
    meta = {k: v.value for k, v in events[0].materialization.metadata.items()}
    run_dir = Path(meta["run_dir"])
    ranks = {p.name for p in run_dir.glob("torchrun/*/attempt_0/*") if p.is_dir()}
    assert ranks == {"0", "1"}
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(meta["mlflow_run_id"])
    # ranks from torchrun, not from Slurm: SLURM_PROCID is 0 for both, and would make a world of one
    assert run.data.params["effective_batch"] == "32", run.data.params.get("effective_batch")
    assert [h["epoch"] for h in meta["history"]] == [1, 2]


def _messages(error) -> str:
    """The messages of an error and of the errors it was raised from (a retry wraps the step's failure)."""
    text = ""
    while error is not None:
        text += error.message
        error = error.cause or error.context
    return text


def _kill_a_rank_when_checkpointed(run_root: Path, stop: threading.Event, killed: list) -> None:
    """SIGKILL rank 1 once the first epoch is checkpointed (best.ckpt, first attempt only). slurmd started
    it, not this process: find it among all processes by its run folder."""
    while not stop.is_set() and not killed:
        if any(run_root.rglob("best.ckpt")):
            for proc in psutil.process_iter(["cmdline", "environ"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    env = proc.info["environ"] or {}
                except psutil.Error:
                    continue
                if "lightning_modules.train" in cmd and str(run_root) in cmd and env.get("RANK") == "1":
                    if "torch.distributed.run" not in cmd:
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
        time.sleep(0.05)


def test_a_killed_rank_fails_the_slurm_job_and_the_retry_resumes_from_last_ckpt(cluster, project: Path) -> None:
    root = _prepared(project)
    epochs = 4
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_a_rank_when_checkpointed, args=(root / "runs", stop, killed), daemon=True)
    watcher.start()
    try:
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                [pretrained_backbone],
                partition_key="resnet18",
                instance=instance,
                resources=_resources(root, nproc_per_node=2),
                run_config={"ops": {"pretrained_backbone": _pretrain(epochs, "trainer.checkpoint_every_n_steps=2")}},
            )
    finally:
        stop.set()
        watcher.join()
    assert killed, "no rank was ever killed"
    assert result.success
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    # The failure named the Slurm job and carried the ranks' stderr tail.
    failure = _messages(retried[0].event_specific_data.error)  # type: ignore[union-attr]
    assert "training failed" in failure and "Slurm job" in failure
    first, second = _attempts(root, "pretrained_backbone")[-2:]
    assert (first / "exit_status").read_text().strip() != "0"
    assert (second / "exit_status").read_text().strip() == "0"
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["pretrained_backbone"]]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert [h["epoch"] for h in meta["history"]] == list(range(1, epochs + 1)), "history survives the resume"
    manifest = json.loads((root / "prepared" / "imagenet" / "manifest.json").read_text())
    assert meta["global_step"] == epochs * -(-manifest["totals"]["train"] // 32)  # effective batch 2 ranks x 16
    # One MLflow run holds both attempts, and the retry resumed after epoch 1: a restart from scratch would
    # have logged epoch 1's validation twice.
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_run(meta["mlflow_run_id"]).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.dagster_run_id = '{result.run_id}'")
    assert len(runs) == 1
    assert len(client.get_metric_history(meta["mlflow_run_id"], "val/loss")) == epochs


CANCEL_SCRIPT = """
import sys, dagster as dg
sys.path.insert(0, {tests!r})
from test_slurm import _pretrain, _resources
from pipelines.assets.training import pretrained_backbone
from pathlib import Path
dg.materialize([pretrained_backbone], partition_key="resnet18", resources=_resources(Path({root!r})),
               run_config={{"ops": {{"pretrained_backbone": _pretrain(50)}}}}, raise_on_error=False)
"""


def test_interrupting_the_dagster_run_cancels_the_slurm_job(cluster, project: Path, tmp_path: Path) -> None:
    root = _prepared(project)
    before = set(_attempts(root, "pretrained_backbone"))
    script = tmp_path / "run.py"
    script.write_text(CANCEL_SCRIPT.format(tests=str(Path(__file__).parent), root=str(root)))
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "DAGSTER_HOME": str(tmp_path)})
    job_id = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job_id is None:
        new = [f for f in _attempts(root, "pretrained_backbone") if f not in before and list(f.glob("slurm-*.out"))]
        if new and slurm.state(_job_id(new[0])) == "RUNNING":
            job_id = _job_id(new[0])
        time.sleep(0.25)
    assert job_id, "the Slurm job never started"
    proc.send_signal(signal.SIGINT)  # what Dagster's run termination raises in the step, too
    assert proc.wait(timeout=120) is not None
    deadline = time.monotonic() + 30
    while slurm.state(job_id) is not None and time.monotonic() < deadline:
        time.sleep(0.25)
    assert slurm.state(job_id) is None, "the Slurm job outlived the Dagster run"
    assert "JobState=CANCELLED" in slurm._slurm(["scontrol", "show", "job", job_id]).stdout


def test_a_job_slurm_refuses_fails_the_step_with_slurms_reason(cluster, project: Path) -> None:
    resources = _resources(project)
    resources["launcher"] = SlurmLauncher(shared_folder=str(project / "slurm"), partition="no-such-partition")
    result = dg.materialize(
        [prepared_imagenet], resources=resources, run_config={"ops": {"prepared_imagenet": PREP}}, raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message  # type: ignore[union-attr]
    assert "sbatch refused the job" in message and "partition" in message.lower()
