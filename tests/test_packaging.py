"""Installing the `cluster` and `postgres` extras adds packages and changes none that is installed: the Dagster
family is pinned to the release for which dagster-k8s and dagster-postgres exist (pip's own dry run, reported as
JSON). `make` installs both extras, so in its venv the dry run may plan nothing beyond the project itself."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cluster_extras_change_no_installed_package(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    extras = ".[cluster,postgres]"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), "-e", extras]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    installed = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    changed = {
        n: (installed[n], v) for n, v in planned.items() if n in installed and installed[n] != v and n != "visionflow"
    }
    assert changed == {}, f"the cluster extras would change installed packages (installed, planned): {changed}"
    # After the install every Dagster package is at the version pyproject pins (the family and the integrations).
    after = {**installed, **planned}
    for name, version in _dagster_pins().items():
        assert after.get(name) == version, f"{name}: {after.get(name)} after the install, pinned {version}"


def _dagster_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["cluster"]]
    requirements += project["optional-dependencies"]["postgres"]
    pins = dict(r.split("==") for r in requirements if r.startswith("dagster") and "==" in r)
    assert {"dagster", "dagster-k8s", "dagster-postgres"} <= set(pins), pins
    return pins
