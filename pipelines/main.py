"""`python -m pipelines.main run|ui`: what `make run` and `make ui` call.

`run` makes sure the raw data is there and versioned (DVC), observes its version, then runs
the `main` job, then the `detection` job (YOLOv3), in this process against the project's Dagster
instance (`.dagster_home/`), so the runs show up in the UI afterwards. `ui` starts `dagster dev`
(webserver + daemon) and an MLflow server on the same store.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

from lightning_modules import tracking
from lightning_modules.paths import project_root

# Dagster's own console logger stays silent: pipelines/console.py shows the run and logs every event to a file.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# Pools of size 1: two training steps never share the machine's cores or GPU (pool "train").
DAGSTER_YAML = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"


def dagster_home(root: Path) -> Path:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(root / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


def run(root: Path, arch: str, detector: str = "yolov3", verbose: bool = False) -> int:
    quiet_console(verbose)  # first: importing the definitions already warns
    # lazy: `ui` needs neither Dagster in this process nor the definitions (loading them takes ~1 s)
    import dagster as dg

    from lightning_modules.data.bootstrap import ensure_default_data  # lazy: generation imports PIL, numpy
    from pipelines.console import RunConsole, StepRow, summary  # lazy: with Dagster, as above
    from pipelines.definitions import defs  # lazy: see above

    dagster_home(root)
    log_file = root / "runs" / "console" / f"{time.strftime('%Y%m%d-%H%M%S')}-run.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as log, contextlib.redirect_stdout(sys.stdout if verbose else log):
        version = ensure_default_data(root)  # DVC prints git hints for each `dvc add`: to the log
    print(f"data version: {version}; the full event log of this run: {log_file}")
    rows: list[StepRow] = []
    with dg.DagsterInstance.get() as instance:
        defs.resolve_job_def("observe_raw_data").execute_in_process(instance=instance, run_config=QUIET_LOGGERS)
        jobs = [("main", arch)] + ([("detection", detector)] if detector else [])
        for job, partition in jobs:
            print(f"{job} [{partition}]", flush=True)
            console = RunConsole(instance, log_file, verbose=verbose)
            run_id = str(uuid.uuid4())
            with console.follow(run_id):
                result = defs.resolve_job_def(job).execute_in_process(
                    instance=instance,
                    partition_key=partition,
                    raise_on_error=False,
                    run_id=run_id,
                    run_config=QUIET_LOGGERS,
                )
            rows += console.rows.values()
            if not result.success:
                break
    summary(rows, f"visionflow run: {'succeeded' if result.success else 'FAILED'}")
    print(f"Dagster runs: `make ui` (stored in {os.environ['DAGSTER_HOME']}); event log: {log_file}")
    return 0 if result.success else 1


def quiet_console(verbose: bool) -> None:
    """Jobs started from here send their ranks' and steps' output to files in their run folders (the
    launcher reads VISIONFLOW_CONSOLE), and library warnings stay off the terminal, unless --verbose."""
    if verbose:
        return
    os.environ.setdefault("VISIONFLOW_CONSOLE", "compact")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.WARNING)


def studies(root: Path) -> int:
    """The `studies` job (search, the six studies, the report) on the prepared sets, through Dagster."""
    import dagster as dg  # lazy: as in run()

    from lightning_modules.data.bootstrap import ensure_default_data  # lazy: as in run()
    from pipelines.definitions import defs  # lazy: as in run()

    dagster_home(root)
    print(f"data version: {ensure_default_data(root)}")
    with dg.DagsterInstance.get() as instance:
        if not all((root / "prepared" / name / "manifest.json").is_file() for name in ("imagenet", "transfer")):
            defs.resolve_job_def("observe_raw_data").execute_in_process(instance=instance)
            result = defs.resolve_job_def("data").execute_in_process(instance=instance, raise_on_error=False)
            _print_summary(result, "data")
            if not result.success:
                return 1
        result = defs.resolve_job_def("studies").execute_in_process(instance=instance, raise_on_error=False)
        _print_summary(result, "studies")
    report = root / "runs" / "studies" / "studies_report.md"
    print(f"\nThe report: {report} (and the studies_report asset in `make ui`).")
    return 0 if result.success else 1


def _print_summary(result, job: str = "main") -> None:
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        numbers = {
            k: v.value for k, v in meta.items() if isinstance(v.value, (int, float, str)) and len(str(v.value)) < 120
        }
        print(f"materialized {event.asset_key.to_user_string()}: {numbers}")
    for event in result.get_asset_check_evaluations():
        print(
            f"  check {event.asset_key.to_user_string()}.{event.check_name}: {'passed' if event.passed else 'FAILED'}"
        )
    print(f"{job} job:", "succeeded" if result.success else "FAILED")


def ui(root: Path, port: int, mlflow_port: int = 5000) -> int:
    """MLflow's UI (a server on the project's SQLite store) and `dagster dev` (webserver + daemon), on 127.0.0.1."""
    dagster_home(root)
    bin_dir = Path(sys.executable).parent
    uri = tracking.default_tracking_uri()
    tracking.ensure_store(uri)
    mlflow_cmd = [
        str(bin_dir / "mlflow"),
        "server",
        "--backend-store-uri",
        uri,
        "--artifacts-destination",
        str(root / "mlartifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(mlflow_port),
    ]
    dagster_cmd = [
        str(bin_dir / "dagster"),
        "dev",
        "-w",
        str(root / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    mlflow_url = f"http://127.0.0.1:{mlflow_port}/#/experiments?{tracking.UI_VIEW}"  # the model-training view
    print(f"MLflow: {mlflow_url}   Dagster: http://127.0.0.1:{port}   (Ctrl-C stops both)")
    mlflow_proc = subprocess.Popen(mlflow_cmd)
    try:
        return subprocess.call(dagster_cmd)
    except KeyboardInterrupt:
        return 0
    finally:
        mlflow_proc.terminate()
        mlflow_proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m pipelines.main")
    p.add_argument(
        "command",
        choices=["run", "studies", "ui"],
        help="run: the main chain then the detector; studies: the search, studies and their report",
    )
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--arch", default="resnet18", help="backbone to pretrain (a pretrained_backbone partition)")
    p.add_argument("--detector", default="yolov3", help="YOLO version to train after the main job; '' skips it")
    p.add_argument("--verbose", action="store_true", help="run: also print Dagster's event stream and job output")
    a = p.parse_args(argv)
    root = project_root()
    os.chdir(root)
    if a.command == "run":
        return run(root, a.arch, a.detector, verbose=a.verbose)
    return studies(root) if a.command == "studies" else ui(root, a.port, a.mlflow_port)


if __name__ == "__main__":
    sys.exit(main())
