"""The real Dagster UI: `dagster dev` starts the webserver and the daemon, and serves our assets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent
QUERY = """{ assetNodes { assetKey { path } }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)["data"]


def test_definitions_load() -> None:
    from pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_data", "prepared_imagenet", "prepared_transfer", "prepared_detection"} <= keys
    assert {"main", "data", "observe_raw_data"} <= {j.name for j in defs.resolve_all_job_defs()}


def test_dagster_dev_serves_assets_and_runs_the_daemon(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(ROOT / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline, data, last_error = time.monotonic() + 150, None, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                data = _graphql(port, QUERY)
                statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
                if data["assetNodes"] and any(s["healthy"] for s in statuses if s["required"]):
                    break
            except Exception as exc:  # noqa: BLE001 - not up yet
                last_error = exc
            time.sleep(2)
        assert data is not None, f"webserver never answered: {last_error}"
        assets = {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}
        assert {"raw_data", "prepared_imagenet", "prepared_transfer", "prepared_detection"} <= assets
        healthy = {s["daemonType"] for s in data["instance"]["daemonHealth"]["allDaemonStatuses"] if s["healthy"]}
        assert "SENSOR" in healthy or "SCHEDULER" in healthy, data["instance"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
