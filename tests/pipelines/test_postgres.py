"""PostgreSQL for teams, on a real server: the local one `make ui-postgres` runs (initdb as a non-root user,
loopback only, reused on restart), and two chains launched at the same time against one Dagster instance
and one MLflow store, on PostgreSQL and on the SQLite default.

Never skipped: without PostgreSQL's server binaries the tests fail, saying that `make test` installs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from lightning_modules.errors import StoreLockedError
from lightning_modules.tracking import ARTIFACTS_ENV, ensure_store
from pipelines.storage import (
    BASE_YAML,
    LocalPostgres,
    PostgresError,
    _bin,
    configure,
    database_url,
    local_server,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_EPOCHS, TRANSFER_EPOCHS = 1, 2
SMALL_NET = ["data.image_size=32", "model.width=0.25", "data.batch_size=16", "data.num_workers=0"]

# One chain (pretrained_backbone -> transfer_finetuned, resnet18) in a process of its own, as a user's run would
# be: argv = project root, result file, settings (JSON). The instance is $DAGSTER_HOME's, the MLflow store
# $MLFLOW_TRACKING_URI.
CHAIN = """
import json, os, sys, time
import dagster as dg
from pipelines.assets.training import pretrained_backbone, transfer_finetuned
from pipelines.launcher import LocalLauncher
from pipelines.resources import DvcResource, MlflowResource, ProjectResource

root, out, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def train(config, epochs, *extra):
    return {"config": {"config_file": os.path.join(spec["repo"], "configs", config),
                       "overrides": [f"trainer.max_epochs={epochs}", *spec["net"], *extra]}}
start, started = time.monotonic(), time.time()
with dg.DagsterInstance.get() as instance:
    result = dg.materialize(
        [pretrained_backbone, transfer_finetuned], partition_key="resnet18", instance=instance,
        resources={"project": ProjectResource(root=root), "dvc": DvcResource(root=root),
                   "mlflow": MlflowResource(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]),
                   "launcher": LocalLauncher(nproc_per_node=1)},
        run_config={"ops": {
            "pretrained_backbone": train("smoke-classify.yaml", spec["pre"], "optim.warmup_epochs=0"),
            "transfer_finetuned": train("transfer-cpu.yaml", spec["tr"], "data.batch_size=8")}},
        raise_on_error=False,
    )
    events = result.all_events
    errors = [e.step_failure_data.error.to_string() for e in events if e.is_step_failure]
    errors += [e.message + " " + (e.event_specific_data.error.to_string() if getattr(e.event_specific_data,
               "error", None) else "") for e in events if e.is_run_failure]
    meta = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}
json.dump({"run_id": result.run_id, "started": started, "success": result.success, "errors": errors,
           "seconds": time.monotonic() - start,
           "mlflow_run_ids": {k: m.get("mlflow_run_id") for k, m in meta.items()}}, open(out, "w"), default=str)
"""
CHAIN_SPEC = json.dumps({"repo": str(ROOT), "net": SMALL_NET, "pre": PRETRAIN_EPOCHS, "tr": TRANSFER_EPOCHS})


@contextlib.contextmanager
def _environ_kept() -> Iterator[None]:
    """configure() sets DAGSTER_HOME, MLFLOW_TRACKING_URI and the artifact folder for the processes it starts:
    undo all of it, or later tests log into our (deleted) folders."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _reachable_folder() -> Path:
    """A temp folder the `postgres` user can reach (pytest's own tmp folders are root-only when run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="visionflow-pg-"))
    folder.chmod(0o755)  # mkdtemp makes it owner-only
    return folder


@pytest.fixture(scope="module")
def pg_project():
    """A project folder with the local server `make ui-postgres` would start (configure(root, "postgres"))."""
    try:
        _bin("initdb")
        _bin("pg_ctl")
    except PostgresError as exc:
        pytest.fail(f"{exc}: these tests need a real PostgreSQL and are never skipped")
    root = _reachable_folder()
    with _environ_kept():
        for name in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "VISIONFLOW_POSTGRES_URL", ARTIFACTS_ENV):
            os.environ.pop(name, None)
        started = time.monotonic()
        storage = configure(root, "postgres")
        setup_s = time.monotonic() - started
        env = {k: os.environ[k] for k in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", ARTIFACTS_ENV)}
    try:
        yield root, storage, env, setup_s
    finally:
        local_server(root).stop()
        shutil.rmtree(root, ignore_errors=True)


def test_local_server_is_non_root_loopback_only_and_reused_on_restart(pg_project) -> None:
    root, storage, _, setup_s = pg_project
    server = local_server(root)
    print(f"\nlocal PostgreSQL: initdb + start + databases + schemas in {setup_s:.1f} s")
    assert server.initialized() and server.is_running()
    owner = (server.data / "PG_VERSION").stat().st_uid
    assert owner != 0 and psutil.Process(_postmaster_pid(server)).username() != "root"
    with psycopg2.connect(database_url(server.server_url(), "dagster", driver="")) as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)
        cur.execute("SELECT datname FROM pg_database")
        assert {"dagster", "mlflow"} <= {row[0] for row in cur.fetchall()}
    for address in _non_loopback_addresses():
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((address, server.port))
    # dagster.yaml names the server's `dagster` database; MLflow's store is its `mlflow` database.
    yaml_text = (storage.dagster_home / "dagster.yaml").read_text()
    assert f'postgres_url: "{database_url(server.server_url(), "dagster")}"' in yaml_text
    assert storage.dagster_home == root / ".dagster_home" / "postgres"
    assert storage.mlflow_uri == database_url(server.server_url(), "mlflow")
    with dg.DagsterInstance.from_config(str(storage.dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    # A restart reuses the folder: same port, password and databases; start() says whether it started it.
    url = server.server_url()
    server.stop()
    assert not server.is_running()
    assert server.start() is True and server.start() is False
    assert server.server_url() == url
    assert MlflowClient(storage.mlflow_uri).search_experiments() is not None
    # The next command on the same instance configures it again (every `make run` after the first does).
    with _environ_kept():
        os.environ.pop("DAGSTER_HOME", None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        again = configure(root, "postgres")
    assert again.dagster_home == storage.dagster_home and again.mlflow_uri == storage.mlflow_uri


def test_a_dagster_yaml_of_your_own_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_modules.errors import ConfigError

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(BASE_YAML + "run_monitoring:\n  enabled: true\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("VISIONFLOW_POSTGRES_URL", "postgresql://u:secret@127.0.0.1:1")
    monkeypatch.setattr("pipelines.storage.ensure_databases", lambda url: None)
    with _environ_kept(), pytest.raises(ConfigError, match="no postgres storage") as err:
        configure(tmp_path, "postgres")
    assert "secret" not in str(err.value)
    with _environ_kept():
        assert configure(tmp_path, "sqlite").dagster_home == home  # the SQLite default keeps it as it is
    assert "run_monitoring" in (home / "dagster.yaml").read_text()


@pytest.fixture(scope="module")
def prepared(tiny_prepared_imagenet: Path, prepared_transfer: Path) -> dict[str, Path]:
    return {"imagenet": tiny_prepared_imagenet, "transfer": prepared_transfer}


def _chain_root(prepared: dict[str, Path], parent: Path) -> Path:
    root = parent / "project"
    (root / "prepared").mkdir(parents=True)
    for name, path in prepared.items():
        (root / "prepared" / name).symlink_to(path)
    return root


def _two_at_once(root: Path, env: dict[str, str]) -> tuple[list[dict], float]:
    """Launch two chains at the same moment; wait for both. Returns their results and the wall time."""
    child_env = {**os.environ, **env, "OMP_NUM_THREADS": "1", "VISIONFLOW_ROOT": str(root)}
    started = time.monotonic()
    procs = []
    for i in range(2):
        out = root / f"chain{i}.json"
        log = (root / f"chain{i}.log").open("w")
        cmd = [sys.executable, "-c", CHAIN, str(root), str(out), CHAIN_SPEC]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT), out))
    for proc, _ in procs:
        proc.wait(timeout=400)
    wall = time.monotonic() - started
    results = []
    for i, (proc, out) in enumerate(procs):
        assert out.is_file(), f"chain {i} exited {proc.returncode} without a result:\n{_tail(root / f'chain{i}.log')}"
        results.append(json.loads(out.read_text()))
    return results, wall


def _tail(path: Path) -> str:
    return path.read_text()[-4000:]


def _assert_each_chain_kept_to_itself(root: Path, results: list[dict], home: str, uri: str) -> None:
    client = MlflowClient(uri)
    run_ids = {r["run_id"] for r in results}
    assert len(run_ids) == 2
    with dg.DagsterInstance.from_config(home) as instance:
        for r in results:
            run_id, mlflow_ids = r["run_id"], r["mlflow_run_ids"]
            assert set(mlflow_ids) == {"pretrained_backbone", "transfer_finetuned"}
            # Its own run folders, holding its own MLflow runs.
            for asset in mlflow_ids:  # runs/<asset>/<partition>/<dagster run id>
                (run_dir,) = (root / "runs" / asset).glob(f"*/{run_id}")
                assert (run_dir / "mlflow_run_id").read_text().strip() == mlflow_ids[asset]
            # Its MLflow runs carry its Dagster run id and exactly its own epochs.
            for asset, epochs in (("pretrained_backbone", PRETRAIN_EPOCHS), ("transfer_finetuned", TRANSFER_EPOCHS)):
                run = client.get_run(mlflow_ids[asset])
                assert run.data.tags["dagster_run_id"] == run_id and run.info.status == "FINISHED"
                assert len(client.get_metric_history(run.info.run_id, "val/loss")) == epochs, asset
            transfer = client.get_run(mlflow_ids["transfer_finetuned"])
            assert transfer.data.tags["pretrained_run_id"] == mlflow_ids["pretrained_backbone"]  # its own backbone
            # Its event log holds only its own events, none lost.
            logs = instance.all_logs(run_id)
            assert logs and all(e.run_id == run_id for e in logs)
            kinds = [e.dagster_event.event_type_value for e in logs if e.dagster_event]
            assert kinds.count("ASSET_MATERIALIZATION") == 2 and kinds.count("STEP_SUCCESS") == 2
            assert kinds.count(dg.DagsterEventType.RUN_START.value) == 1
            assert kinds[-1] == dg.DagsterEventType.RUN_SUCCESS.value
            record = instance.get_run_by_id(run_id)
            assert record is not None and record.status == dg.DagsterRunStatus.SUCCESS
            t0 = min(x["started"] for x in results)
            print(f"  run {run_id[:8]} steps (s from the first chain's start): {_timeline(logs, t0)}")
    for experiment in ("visionflow-pretraining", "visionflow-transfer"):  # one experiment each, both runs in it
        exp = client.get_experiment_by_name(experiment)
        assert exp is not None and len(client.search_runs([exp.experiment_id])) == 2


def test_two_chains_at_once_on_postgres(pg_project, prepared) -> None:
    root, storage, env, _ = pg_project
    project = _chain_root(prepared, root)
    results, wall = _two_at_once(project, env)
    print(f"\npostgres, two chains at once: {wall:.0f} s wall; " + ", ".join(f"{r['seconds']:.0f} s" for r in results))
    for i, r in enumerate(results):
        assert r["success"], (
            f"chain {i} failed on PostgreSQL:\n" + "\n".join(r["errors"])[-4000:] + _tail(project / f"chain{i}.log")
        )
    _assert_each_chain_kept_to_itself(project, results, str(storage.dagster_home), storage.mlflow_uri)


def test_two_chains_at_once_on_sqlite_succeed_or_say_use_postgres(prepared) -> None:
    parent = Path(tempfile.mkdtemp(prefix="visionflow-sqlite-"))
    try:
        root = _chain_root(prepared, parent)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        with _environ_kept():  # the SQLite default, as `make run` sets it up
            os.environ.pop("DAGSTER_HOME", None)
            os.environ["MLFLOW_TRACKING_URI"] = uri
            home = configure(root, "sqlite").dagster_home
        assert (home / "dagster.yaml").read_text() == BASE_YAML
        ensure_store(uri)
        results, wall = _two_at_once(root, {"DAGSTER_HOME": str(home), "MLFLOW_TRACKING_URI": uri})
        outcome = ["succeeded" if r["success"] else "failed" for r in results]
        print(
            f"\nsqlite, two chains at once: {outcome}, {wall:.0f} s wall; "
            + ", ".join(f"{r['seconds']:.0f} s" for r in results)
        )
        for i, r in enumerate(results):
            if not r["success"]:
                text = "\n".join(r["errors"])
                assert StoreLockedError.MESSAGE in text, f"chain {i} failed without saying why:\n{text[-4000:]}"
                assert "database is locked" not in text, f"chain {i}: a locked-database traceback:\n{text[-4000:]}"
        if all(r["success"] for r in results):
            _assert_each_chain_kept_to_itself(root, results, str(home), uri)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _timeline(logs, t0: float) -> str:
    """Each step's start and end, in seconds: shows whether the pool "train" (limit 1) took turns."""
    marks = {}
    for e in logs:
        if e.dagster_event and e.step_key and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS"):
            marks.setdefault(e.step_key, []).append(e.timestamp - t0)
    return ", ".join(f"{k} {v[0]:.0f}-{v[-1]:.0f}" for k, v in marks.items())


def test_every_pool_of_the_definitions_is_created_up_front() -> None:
    from pipelines.definitions import defs
    from pipelines.storage import POOLS

    pools = {node.pool for job in defs.resolve_all_job_defs() for node in job.graph.node_defs if node.pool}
    assert "train" in pools and pools <= set(POOLS), f"add {pools - set(POOLS)} to pipelines.storage.POOLS"


def _postmaster_pid(server: LocalPostgres) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def _non_loopback_addresses() -> list[str]:
    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def test_a_locked_sqlite_store_says_use_postgres_not_database_is_locked() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from lightning_modules.tracking import clear_lock_errors

    locked = OperationalError("INSERT INTO runs ...", {}, sqlite3.OperationalError("database is locked"))
    with pytest.raises(StoreLockedError, match="use Postgres for concurrent runs") as err:
        with clear_lock_errors("sqlite:////tmp/mlflow.db"):
            raise RuntimeError("creating the run failed") from locked
    assert "database is locked" not in str(err.value) and err.value.__suppress_context__
    with pytest.raises(OperationalError), clear_lock_errors("postgresql+psycopg2://u@127.0.0.1:1/mlflow"):
        raise locked  # another store's errors pass through as they are
