"""Installing the `cluster` extra adds packages and changes none that is installed: the Dagster family is
pinned to the release for which dagster-k8s exists (pip's own dry run, reported as JSON)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cluster_extra_changes_no_installed_package(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), "-e", ".[cluster]"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    installed = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    changed = {
        n: (installed[n], v) for n, v in planned.items() if n in installed and installed[n] != v and n != "visionflow"
    }
    assert changed == {}, f"the cluster extra would change installed packages (installed, planned): {changed}"
    assert "dagster-k8s" in planned  # and it really adds the Kubernetes integration
