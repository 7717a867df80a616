"""The real Dagster UI: `dagster dev` starts the webserver and the daemon, serves our assets, and a
run launched through its GraphQL API (the path a click in the UI takes) runs to success."""

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
import pytest

from lightning_modules.data import versioning
from lightning_modules.data.synth import synthesize

pytestmark = pytest.mark.slow  # dagster dev (webserver + daemon) and runs launched through it

ROOT = Path(__file__).resolve().parents[2]
STATUS = """{ assetNodes { assetKey { path } }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"""
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
CHECKS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { stepStats { stepKey status } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=20) as resp:
        payload = json.load(resp)
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


def test_definitions_load() -> None:
    from pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "raw_data",
        "prepared_imagenet",
        "prepared_transfer",
        "prepared_detection",
        "pretrained_backbone",
        "transfer_finetuned",
        "scratch_baseline",
        "transfer_report",
        "classification_evaluation",
        "yolo_detector",
        "detection_evaluation",
    } <= keys
    assert {"main", "data", "observe_raw_data", "detection"} <= {j.name for j in defs.resolve_all_job_defs()}
    assert "detection_after_main" in {s.name for s in defs.sensors}


def test_the_launchpad_starts_with_the_training_overrides_shown() -> None:
    """What the Launchpad pre-fills for a partition: every training asset's overrides and overlay files."""
    from pipelines.definitions import defs

    for job, assets in (
        ("main", {"pretrained_backbone", "transfer_finetuned", "scratch_baseline"}),
        ("detection", {"yolo_detector"}),
    ):
        job_def = defs.resolve_job_def(job)
        key = job_def.partitions_def.get_partition_keys()[0]
        ops = job_def.get_run_config_for_partition_key(key)["ops"]
        assert set(ops) == assets
        assert all(ops[a]["config"] == {"overrides": [], "extra_config_files": []} for a in assets)


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """`dagster dev` on a free port, over a tiny generated project (VISIONFLOW_ROOT)."""
    project = tmp_path_factory.mktemp("project")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    synthesize(
        project / "data",
        classes=3,
        per_class=8,
        val_per_class=2,
        transfer_classes=2,
        transfer_per_class=4,
        transfer_val_per_class=2,
        det_train=12,
        det_val=4,
        det_test=4,
        seed=1,
    )
    versioning.init(project, str(project / "remote"))
    versioning.add(project)
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "VISIONFLOW_ROOT": str(project)}
    # Its output goes to a file: an unread pipe fills up, and `dagster dev` then blocks writing its
    # shutdown logs (teardown waited out the whole SIGTERM grace period, 30 s, every time).
    log = home / "dagster_dev.log"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            str(ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline, last_error = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                data = _graphql(port, STATUS)
                if data["assetNodes"] and any(
                    s["healthy"] for s in data["instance"]["daemonHealth"]["allDaemonStatuses"]
                ):
                    break
            except Exception as exc:  # noqa: BLE001 - not up yet
                last_error = exc
            time.sleep(2)
        else:
            pytest.fail(f"dagster dev never became ready: {last_error}")
        yield port, project, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_dagster_dev_serves_assets_and_runs_the_daemon(dagster_dev) -> None:
    port, *_ = dagster_dev
    data = _graphql(port, STATUS)
    assets = {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}
    assert {"raw_data", "prepared_imagenet", "pretrained_backbone", "classification_evaluation"} <= assets
    healthy = {s["daemonType"] for s in data["instance"]["daemonHealth"]["allDaemonStatuses"] if s["healthy"]}
    assert {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"} & healthy, data["instance"]


def test_run_launched_through_graphql_succeeds(dagster_dev) -> None:
    port, project, _ = dagster_dev
    small = {"config": {"image_size": 32, "workers": 1}}
    params = {
        "selector": {"repositoryLocationName": "visionflow", "repositoryName": "__repository__", "jobName": "data"},
        "runConfigData": {
            "ops": {
                "prepared_imagenet": small,
                "prepared_transfer": small,
                "prepared_detection": {"config": {"anchor_image_size": 128, "bpr_floor": 0.5}},
            }
        },
    }
    launched = _graphql(port, LAUNCH, {"p": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline, status = time.monotonic() + 240, None
    while time.monotonic() < deadline:
        status = _graphql(port, RUN, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS", status
    # The run really prepared the generated data of the project it was pointed at.
    manifest = json.loads((project / "prepared" / "imagenet" / "manifest.json").read_text())
    assert manifest["image_size"] == 32 and len(manifest["classes"]) == 3


@pytest.mark.browser
def test_materialize_clicked_in_the_ui_runs_and_the_asset_page_shows_its_plot(dagster_dev, page) -> None:
    """In a real browser: the asset's Materialize button launches a run, the run succeeds, and the asset
    page then renders the materialization's plot (markdown metadata opens behind "Show Markdown")."""
    port, *_ = dagster_dev
    asset = f"http://127.0.0.1:{port}/assets/prepared_transfer"
    page.goto(asset)
    materialize = page.get_by_role("button").filter(has_text="Materialize").first
    materialize.wait_for(timeout=60_000)
    page.wait_for_timeout(2_000)  # a first visit may open Dagster's community dialog: close it
    if page.get_by_role("button", name="Skip").count():
        page.get_by_role("button", name="Skip").click()
    materialize.click()
    page.get_by_text("Launched run").first.wait_for(timeout=30_000)
    page.goto(f"http://127.0.0.1:{port}/runs")  # the run list refreshes itself until the run is done
    page.get_by_text("Success").first.wait_for(timeout=240_000)
    page.goto(asset)
    page.get_by_text("ago").first.wait_for(timeout=60_000)  # "Latest materialization: a minute ago"
    page.get_by_text("Show Markdown").first.click()  # the class histogram
    page.wait_for_function(
        "() => [...document.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 100)",
        timeout=30_000,
    )
    assert page.unexpected_console_errors(port) == []


@pytest.mark.browser
def test_a_run_launched_the_way_make_run_does_shows_in_the_overview_timeline(
    dagster_dev, page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` queues its runs with `dagster job launch` (pipelines/submit.py) and the daemon starts them;
    such runs carry their code location, so the Overview timeline draws them (in-process runs it left out)."""
    import dagster as dg

    from pipelines import submit
    from pipelines.main import QUIET_LOGGERS

    port, project, home = dagster_dev
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("VISIONFLOW_ROOT", str(project))
    timeline = f"http://127.0.0.1:{port}/overview/activity/timeline"
    page.goto(timeline)
    page.get_by_role("button", name="12hr").wait_for(timeout=60_000)
    page.wait_for_timeout(3_000)  # the runs query; a first visit may also open Dagster's community dialog
    if page.get_by_role("button", name="Skip").count():
        page.get_by_role("button", name="Skip").click()
    assert page.get_by_text("observe_raw_data", exact=True).count() == 0, "no such run yet"
    run_id = submit.launch(ROOT, "observe_raw_data", run_config=QUIET_LOGGERS)  # the dagster dev daemon starts it
    with dg.DagsterInstance.get() as instance:
        assert submit.wait(instance, run_id, queued_patience_s=120) == dg.DagsterRunStatus.SUCCESS
    page.goto(timeline)
    page.get_by_text("observe_raw_data", exact=True).first.wait_for(timeout=60_000)
    assert page.unexpected_console_errors(port) == []
