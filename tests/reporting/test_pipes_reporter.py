"""The "pipes" reporter under a real Dagster Pipes session: torchrun with 2 ranks, one materialization
(from rank 0 only) with the job's metadata; a failing job's error reaches Dagster. The test imports
dagster; lightning_modules itself never does (only the light `dagster_pipes`)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.slow  # jobs under torchrun reporting through Pipes

REPO = Path(__file__).resolve().parents[2]
TRANSFER = REPO / "configs" / "transfer-cpu.yaml"

EXPECTED_KEYS = {
    "val_acc1",
    "val_acc5",
    "val_loss",
    "epochs",
    "global_step",
    "effective_batch",
    "lr_effective",
    "best_checkpoint",
    "run_dir",
    "mlflow_run_id",
    "tracking_uri",
    "history",
    "figures",
    "data_version",
    "status",
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(
        {
            "MPLBACKEND": "Agg",
            "DATA_OPTIMIZER_CACHE_FOLDER": str(REPO / ".cache" / "litdata"),
            "VISIONFLOW_REPORTER": "pipes",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def test_lightning_modules_never_import_dagster() -> None:
    for path in (REPO / "lightning_modules").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad = [n for n in names if n == "dagster" or n.startswith("dagster.")]
            assert not bad, f"{path}: imports {bad}"
    code = (
        "import sys, lightning_modules.train, lightning_modules.reporting.pipes, "
        "lightning_modules.classification.evaluate, "
        "lightning_modules.cli; assert not [m for m in sys.modules if m.split('.')[0] == 'dagster'], 'dagster'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint in our format (state_dict + hyper_parameters) without training: enough to transfer from."""
    import torch

    from lightning_modules.classification.module import ClassificationModule

    module = ClassificationModule(
        model={"name": "resnet18", "width": 0.25, "small_input": True},
        optim={"name": "sgd", "lr": 0.1},
        loss={"name": "cross_entropy"},
        num_classes=4,
    )
    path = tmp_path_factory.mktemp("pre") / "pretrained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def _materialize(command: list[str]):
    @dg.asset
    def trained(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        return pipes.run(command=command, context=context, env=_env(), cwd=str(REPO)).get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [trained], resources={"pipes": dg.PipesSubprocessClient()}, instance=instance, raise_on_error=False
    )
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    return result, logs, instance


def test_torchrun_two_ranks_report_one_materialization_from_rank_zero(
    prepared_transfer: Path, untrained_checkpoint: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "lightning_modules.train",
        str(TRANSFER),
        "--data",
        str(prepared_transfer),
        "--out",
        str(out),
    ]
    # 2 ranks x 4 train images each, batch 2: 2 steps per epoch; epoch 1 frozen, epoch 2 unfrozen (DDP).
    for s in (
        "data.batch_size=2",
        "data.num_workers=0",
        "trainer.max_epochs=2",
        "optim.freeze_body_epochs=1",
        "model.width=0.25",
        "model.small_input=true",
        f"model.pretrained_checkpoint={untrained_checkpoint}",
        "trainer.grad_monitor_every_n_steps=0",
        f"tracking.tracking_uri={mlflow_uri}",
        "tracking.experiment=test-pipes",
    ):
        cmd += ["--set", s]
    result, logs, _ = _materialize(cmd)
    assert result.success, "\n".join(m for m in logs if m)[-4000:]
    (mat,) = result.asset_materializations_for_node("trained")
    meta = mat.metadata
    assert EXPECTED_KEYS <= set(meta), EXPECTED_KEYS - set(meta)
    assert meta["status"].value == "finished" and meta["epochs"].value == 2 and meta["global_step"].value == 4
    assert meta["effective_batch"].value == 4 and meta["world_size"].value == 2
    assert Path(meta["best_checkpoint"].value).is_file() and meta["run_dir"].value == str(out.resolve())
    history = meta["history"].value
    assert [r["epoch"] for r in history] == [1, 2] and all(r["val_acc1"] is not None for r in history)
    assert meta["mlflow_run_id"].value == (out / "mlflow_run_id").read_text().strip()
    assert all(Path(p).is_file() for p in meta["figures"].value)
    assert json.loads((out / "result.json").read_text())["mlflow_run_id"] == meta["mlflow_run_id"].value
    # Rank 0 alone talks to Dagster: one start line, one line per epoch, with the planned epochs.
    text = [m for m in logs if m]
    assert sum("training: world size 2" in m for m in text) == 1
    assert sum("epoch 1/2:" in m for m in text) == 1 and sum("epoch 2/2:" in m for m in text) == 1


def test_a_failing_job_reports_its_error_through_pipes(prepared_transfer: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "lightning_modules.train",
        str(TRANSFER),
        "--data",
        str(prepared_transfer),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "model.name=resnet9",
    ]
    result, _, instance = _materialize(cmd)
    assert not result.success
    assert not result.asset_materializations_for_node("trained")
    errors = [
        str(e.dagster_event.engine_event_data.error)
        for e in instance.all_logs(result.run_id)
        if e.dagster_event is not None
        and e.dagster_event.is_engine_event
        and "closed with exception" in (e.user_message or e.dagster_event.message or "")
    ]
    assert errors and "resnet9" in errors[0], errors
