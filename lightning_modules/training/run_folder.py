"""RUN_DIR: what makes a run folder one job, and whether it is new, unfinished or finished.

RUN_DIR/config.yaml (the whole config) and RUN_DIR/job.json (data path, data version and content) are
written once, at the first start; a rerun into the same folder must be the same job (same config up to
the fields below, same data content) and resumes or reports; anything else needs a new --out.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lightning_modules.config import JobConfig, diff, dump_yaml, to_dict
from lightning_modules.contract import RESULT_FILE
from lightning_modules.data.lineage import data_identity
from lightning_modules.errors import ConfigError

CONFIG_FILE = "config.yaml"
JOB_FILE = "job.json"
# Fields that may differ between attempts of one run without changing what it computes
# (tracking.tags.* too: a Dagster retry carries another Dagster run id).
RERUN_FREE = {"data.num_workers", "trainer.devices", "tracking.run_id"}
RERUN_FREE_PREFIXES = ("tracking.tags.",)


def run_state(run_dir: Path) -> str:
    """ "new", "unfinished" (config.yaml but no finished result) or "finished"."""
    result = run_dir / RESULT_FILE
    if result.is_file():
        try:
            if json.loads(result.read_text()).get("status") == "finished":
                return "finished"
        except json.JSONDecodeError:
            pass
    return "unfinished" if (run_dir / CONFIG_FILE).is_file() else "new"


def check_same_job(run_dir: Path, cfg: JobConfig, data: Path) -> None:
    """A run folder belongs to one config and one dataset; anything else needs a new --out."""
    stored = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    changed = [k for k in diff(stored, to_dict(cfg)) if k not in RERUN_FREE and not k.startswith(RERUN_FREE_PREFIXES)]
    if changed:
        raise ConfigError(
            f"{run_dir / CONFIG_FILE}: this run folder was started with a different config "
            f"({', '.join(changed)} differ); use a new --out to train with it"
        )
    job_file = run_dir / JOB_FILE
    if not job_file.is_file():
        return
    job = json.loads(job_file.read_text())
    old = job.get("data")
    if old and Path(old) != data.resolve():
        raise ConfigError(f"{job_file}: this run folder trained on {old}, not {data.resolve()}; use a new --out")
    # Same path, other content (the set was prepared again from other data): a new job, not this one.
    then, now = job.get("data_fingerprint"), data_identity(data)
    if then != now:
        raise ConfigError(
            f"{job_file}: this run folder trained on {old or data} as it was then (data "
            f"{then or 'of unknown content'}); the set there now is {now or 'of unknown content'}: "
            "use a new --out to train on it"
        )


def record_job(run_dir: Path, cfg: JobConfig, data: Path, data_version: str, sources: str) -> None:
    """config.yaml and job.json, written once (a resumed attempt keeps the first ones)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "data": str(data.resolve()),
        "data_version": data_version,
        "data_fingerprint": data_identity(data),
        "config_sources": sources,
    }
    write_once(run_dir / CONFIG_FILE, dump_yaml(cfg))
    write_once(run_dir / JOB_FILE, json.dumps(job, indent=2))


def write_once(path: Path, text: str) -> None:
    if path.is_file():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
