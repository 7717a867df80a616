"""The job contract: one request type builds the one command line and validates without torch;
one result type says which keys every launcher can rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_modules.contract import REQUIRED_KEYS, JobFailed, JobRequest, read_result, summary
from lightning_modules.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke-classify.yaml")


def test_one_command_line_for_every_launcher(tmp_path: Path) -> None:
    req = JobRequest(configs=[SMOKE], data=tmp_path / "d", run_dir=tmp_path / "r", overrides=["optim.lr=0.1"])
    more = req.with_overrides("trainer.max_epochs=2").with_env(A="1")
    assert req.overrides == ("optim.lr=0.1",), "a request is immutable: with_* returns a new one"
    assert more.module_args() == [
        "-m",
        "lightning_modules.train",
        SMOKE,
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "r"),
        "--set",
        "optim.lr=0.1",
        "--set",
        "trainer.max_epochs=2",
    ]
    assert more.command("py")[0] == "py" and more.env == {"A": "1"}


def test_validation_names_the_field_and_needs_no_torch(tmp_path: Path) -> None:
    req = JobRequest(configs=[SMOKE], data=tmp_path, run_dir=tmp_path, overrides=["trainer.epochs=3"])
    with pytest.raises(ConfigError, match="unknown key 'trainer.epochs'"):
        req.validate()
    assert JobRequest(configs=[SMOKE], data=tmp_path, run_dir=tmp_path).validate().trainer.max_epochs == 5
    code = (
        "import sys; from lightning_modules.contract import JobRequest; "
        f"JobRequest(configs=[{SMOKE!r}], data='d', run_dir='r').validate(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_result_without_its_required_keys_is_refused(tmp_path: Path) -> None:
    assert {"best_checkpoint", "mlflow_run_id", "status", "data_version"} <= set(REQUIRED_KEYS)
    with pytest.raises(JobFailed, match="without writing result.json"):
        read_result(tmp_path)
    (tmp_path / "result.json").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(JobFailed, match="missing best_checkpoint"):
        read_result(tmp_path)
    full = {k: None for k in REQUIRED_KEYS} | {"status": "finished", "metrics": {"val/acc1": 0.51234, "x": 1.0}}
    (tmp_path / "result.json").write_text(json.dumps(full))
    assert read_result(tmp_path)["status"] == "finished"
    assert summary(full)["metrics"] == {"val/acc1": 0.5123}
