"""Rules of the layout that keep the two halves apart: the Dagster side never imports torch, and no
private Dagster API is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_loading_the_dagster_definitions_imports_no_torch() -> None:
    # A fresh interpreter: this test process has torch loaded already.
    code = "import sys, pipelines.definitions; print('torch' in sys.modules, 'pytorch_lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout


def test_no_private_dagster_imports() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("pipelines", "lightning_modules", "tests")
        for path in sorted((REPO / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if ("from dagster._" in line or "import dagster._" in line) and path.name != "test_architecture.py"
    ]
    assert offenders == []
