"""Shared fixtures: tiny synthetic raw data, its prepared classification set, a throwaway MLflow store.

Generic on purpose, so any test can reuse them:
- `tiny_raw_data`: `synthesize(...)` output folder (imagenet/, transfer/, detection/), 4 classes x 16.
- `tiny_prepared_imagenet`: `prep_classification` of it at 32 px (64 train / 16 val images).
- `versioned_project`: a factory making a folder a project as a clone has it (git, synthetic raw data in
  data/, versioned by DVC with a local remote), for the tests that run the assets on their own project.
- `mlflow_uri`: a SQLite tracking URI in a session temp folder, schema already created
  (pass it on explicitly, e.g. `--set tracking.tracking_uri=...`; the environment is left alone).
- `browser`, `page`: a real headless Chromium (Debian's, driven by Playwright; `make test` installs it when
  missing) for tests marked `browser` against our servers on 127.0.0.1; a failing test leaves a screenshot
  in tests/browser/artifacts/, and `page.unexpected_console_errors(port)` lists console errors outside
  the documented allow-list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(REPO / ".cache" / "litdata"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def versioned_project():
    """`versioned_project(root, seed=S, **sizes)`: git init, `synthesize(root / "data", ...)`, DVC add with
    the remote root/remote; returns root."""
    from lightning_modules.data import versioning
    from lightning_modules.data.synth import synthesize

    def make(root: Path, *, seed: int, **sizes) -> Path:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        synthesize(root / "data", seed=seed, **sizes)
        versioning.init(root, str(root / "remote"))
        versioning.add(root)
        return root

    return make


@pytest.fixture(scope="session")
def tiny_raw_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_modules.data.synth import synthesize

    out = tmp_path_factory.mktemp("raw")
    synthesize(
        out,
        classes=4,
        per_class=16,
        val_per_class=4,
        transfer_classes=2,
        transfer_per_class=4,
        transfer_val_per_class=2,
        transfer_test_per_class=10,
        det_train=4,
        det_val=2,
        det_test=2,
        seed=0,
    )
    return out


@pytest.fixture(scope="session")
def tiny_prepared_imagenet(tiny_raw_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_modules.data.imagenet_prep import prep_classification

    out = tmp_path_factory.mktemp("prepared") / "imagenet"
    prep_classification(tiny_raw_data / "imagenet", out, image_size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def prepared_transfer(tiny_raw_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny few-shot transfer set (train/val/test) prepared at 32 px; read-only for tests."""
    from lightning_modules.data.imagenet_prep import prep_classification

    out = tmp_path_factory.mktemp("prepared") / "transfer"
    prep_classification(tiny_raw_data / "transfer", out, image_size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    from lightning_modules.tracking import ensure_store

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ensure_store(uri)
    return uri


# -- browser tests ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine notes say: no first-run work, no background connections (this network refuses them).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "browser" / "artifacts"
# Console errors we know and accept (matched on "message @ url"): MLflow's UI asks for the signed-in user,
# which a server without authentication answers with 404.
ALLOWED_CONSOLE_ERRORS = ("404 (Not Found) @ http://127.0.0.1:{port}/ajax-api/2.0/mlflow/users/current",)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    """A page that records console errors (`page.console_errors`) and leaves a screenshot when the test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(f"{m.text} @ {m.location.get('url')}") if m.type == "error" else None)
    pg.console_errors = errors
    pg.unexpected_console_errors = lambda port: _unexpected(errors, port)
    yield pg
    if getattr(request.node, "failed", False):
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().when == "call" and outcome.get_result().failed:
        item.failed = True


def _unexpected(errors: list[str], port: int) -> list[str]:
    allowed = [a.format(port=port) for a in ALLOWED_CONSOLE_ERRORS]
    return [e for e in errors if not any(a in e for a in allowed)]
