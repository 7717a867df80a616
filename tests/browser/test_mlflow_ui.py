"""The MLflow UI as users use it, in a real browser: our links open the model-training view, Compare shows
two runs' figures side by side, the registry shows the champion alias (issue 14)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
MODEL = "visionflow-classifier"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    """An MLflow server (SQL store) holding two runs with a real learning-curve figure each, and a
    registered version with the champion alias, all written by our own tracking code."""
    import torch
    from mlflow.tracking import MlflowClient

    from lightning_modules import tracking
    from lightning_modules.tracking import model_registry as registry

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracking.ensure_store(uri)
    client = MlflowClient(uri)
    runs = {}
    for name, accs in (("transfer", (0.4, 0.6, 0.7)), ("scratch", (0.2, 0.3, 0.35))):
        run_id, _ = tracking.open_run(uri, "visionflow-transfer", tmp / name, name, {"init": name})
        for step, acc in enumerate(accs):
            tracking.log_metrics(uri, run_id, {"val/acc1": acc, "train/loss": 2 - acc}, step=step)
        tracking.log_figure(uri, run_id, tracking.learning_curves(uri, run_id, tmp / name / "learning_curves.png"))
        client.set_terminated(run_id)
        runs[name] = run_id
    checkpoint = tmp / "model.ckpt"
    torch.save({"hyper_parameters": {"model": {"name": "resnet18"}}, "state_dict": {}}, checkpoint)
    version = registry.log_and_register(uri, runs["transfer"], checkpoint, MODEL, kind="classifier")
    client.set_registered_model_alias(MODEL, registry.ALIAS, version)

    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri]
        + ["--artifacts-destination", str(tmp / "served"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, "mlflow server exited"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server never answered")
        experiment = client.get_run(runs["transfer"]).info.experiment_id
        yield {"port": port, "uri": uri, "runs": runs, "experiment": experiment, "version": version}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_our_run_link_opens_the_model_training_view(mlflow_ui, page) -> None:
    from lightning_modules import tracking

    port = mlflow_ui["port"]
    page.goto(tracking.run_url(mlflow_ui["uri"], mlflow_ui["runs"]["transfer"], f"http://127.0.0.1:{port}"))
    page.get_by_text("val/acc1").first.wait_for(timeout=30_000)
    # The model-training view: its sidebar has the registry (the GenAI view shows traces and judges instead).
    assert page.get_by_role("link", name="Model registry").first.is_visible()
    assert page.unexpected_console_errors(port) == []


def test_compare_shows_both_runs_figures_side_by_side(mlflow_ui, page) -> None:
    port, runs = mlflow_ui["port"], mlflow_ui["runs"]
    ids = ",".join(f'"{r}"' for r in runs.values())
    page.goto(
        f'http://127.0.0.1:{port}/#/compare-runs?runs=[{ids}]&experiments=["{mlflow_ui["experiment"]}"]'
        "&workflowType=machine_learning"
    )
    page.get_by_text("learning_curves.png").first.wait_for(timeout=30_000)
    assert page.get_by_text("No common artifacts to display").count() == 0
    # the first common artifact is shown: one rendered figure per run
    page.wait_for_function(
        "() => [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 100).length >= 2",
        timeout=30_000,
    )
    assert page.unexpected_console_errors(port) == []


def test_the_registry_shows_the_champion_alias(mlflow_ui, page) -> None:
    port = mlflow_ui["port"]
    page.goto(f"http://127.0.0.1:{port}/#/models/{MODEL}?workflowType=machine_learning")
    page.get_by_text(f"Version {mlflow_ui['version']}").first.wait_for(timeout=30_000)
    assert page.get_by_text("champion").first.is_visible()
    assert page.unexpected_console_errors(port) == []
