"""`python -m pipelines.main run|ui`: what `make run` and `make ui` call.

`run` makes sure the raw data is there and versioned (DVC), observes its version, then runs
the `main` job, then the `detection` job (YOLOv3), in this process against the project's Dagster
instance (`.dagster_home/`), so the runs show up in the UI afterwards. `ui` starts `dagster dev`
(webserver + daemon) and an MLflow server on the same store.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from lightning_modules import tracking
from lightning_modules.paths import project_root

# Pools of size 1: two training steps never share the machine's cores or GPU (pool "train").
DAGSTER_YAML = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"


def dagster_home(root: Path) -> Path:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(root / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


def run(root: Path, arch: str, detector: str = "yolov3") -> int:
    # lazy: `ui` needs neither Dagster in this process nor the definitions (loading them takes ~1 s)
    import dagster as dg

    from lightning_modules.data.bootstrap import ensure_default_data  # lazy: generation imports PIL, numpy
    from pipelines.definitions import defs  # lazy: see above

    dagster_home(root)
    version = ensure_default_data(root)
    print(f"data version: {version}")
    with dg.DagsterInstance.get() as instance:
        defs.resolve_job_def("observe_raw_data").execute_in_process(instance=instance)
        result = defs.resolve_job_def("main").execute_in_process(
            instance=instance, partition_key=arch, raise_on_error=False
        )
        _print_summary(result)
        if result.success and detector:
            result = defs.resolve_job_def("detection").execute_in_process(
                instance=instance, partition_key=detector, raise_on_error=False
            )
            _print_summary(result, "detection")
    print(f"\nOpen the Dagster UI with `make ui` (runs are stored in {os.environ['DAGSTER_HOME']}).")
    return 0 if result.success else 1


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
    print(f"MLflow: http://127.0.0.1:{mlflow_port}   Dagster: http://127.0.0.1:{port}   (Ctrl-C stops both)")
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
    a = p.parse_args(argv)
    root = project_root()
    os.chdir(root)
    if a.command == "run":
        return run(root, a.arch, a.detector)
    return studies(root) if a.command == "studies" else ui(root, a.port, a.mlflow_port)


if __name__ == "__main__":
    sys.exit(main())
