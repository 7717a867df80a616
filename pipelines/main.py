"""`python -m pipelines.main run|ui`: what `make run` and `make ui` call.

`run` makes sure the raw data is there and versioned (DVC), observes its version, then runs
the `main` job, then the `detection` job (YOLOv3). Each is launched on the project's Dagster instance
(`.dagster_home/`) as the UI would launch it (pipelines/submit.py: a daemon starts it), so the runs show
up in the UI afterwards, timeline included. `ui` starts `dagster dev` (webserver + daemon) and an MLflow
server on the same store.

`--postgres` (or VISIONFLOW_STORAGE=postgres) keeps Dagster's and MLflow's records in PostgreSQL instead of
the SQLite files (pipelines/storage.py): runs launched at the same time then never lock each other out.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from filelock import Timeout

from lightning_modules import tracking
from lightning_modules.errors import VisionflowError
from lightning_modules.paths import project_root
from pipelines import storage

# Dagster's own console logger stays silent: pipelines/console.py shows the run and logs every event to a file.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# Pools of size 1: two training steps never share the machine's cores or GPU (pool "train").
DAGSTER_YAML = storage.BASE_YAML


def dagster_home(root: Path) -> Path:
    """The instance's folder for the chosen storage (VISIONFLOW_STORAGE), its dagster.yaml written; for
    PostgreSQL the server is started when it is the project's own, and MLflow's store follows it."""
    return storage.configure(root).dagster_home


def run(root: Path, arch: str, detector: str = "yolov3", verbose: bool = False) -> int:
    """Observe the raw data, then the `main` job, then the `detection` job, as runs the UI would launch."""
    jobs: list[tuple[str, str | None]] = [("observe_raw_data", None), ("main", arch)]
    return _run_jobs(root, jobs + ([("detection", detector)] if detector else []), "visionflow run", verbose)


def _run_jobs(root: Path, jobs: list[tuple[str, str | None]], title: str, verbose: bool) -> int:
    """Launch each (job, partition) through the instance in turn, follow it on the console, stop at a failure."""
    quiet_console(verbose)  # first: importing Dagster already warns
    # lazy: `ui` needs no Dagster in this process
    import dagster as dg

    from lightning_modules.data.bootstrap import ensure_default_data  # lazy: generation imports PIL, numpy
    from pipelines import submit  # lazy: with Dagster, as above
    from pipelines.automation import DETECTION_TAG  # lazy: imports the assets
    from pipelines.console import RunConsole, StepRow, summary  # lazy: as above

    dagster_home(root)
    log_file = root / "runs" / "console" / f"{time.strftime('%Y%m%d-%H%M%S')}-run.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as log, contextlib.ExitStack() as quiet:
        if not verbose:  # DVC prints git hints after each `dvc add` (through its own console): to the log
            quiet.enter_context(_to_file(log))
        version = ensure_default_data(root)
    print(f"data version: {version}; the full event log of this run: {log_file}")
    rows: list[StepRow] = []
    ok = True
    with dg.DagsterInstance.get() as instance, log_file.open("a") as log, submit.daemon(root, log):
        for job, partition in jobs:
            print(f"{job}{f' [{partition}]' if partition else ''}", flush=True)
            console = RunConsole(instance, log_file, verbose=verbose)
            # the detection_after_main sensor must not add a second detection run: we launch ours next
            tags = {DETECTION_TAG: "launched-separately"} if job == "main" else None
            try:
                run_id = submit.launch(root, job, partition, run_config=QUIET_LOGGERS, tags=tags)
                with console.follow(run_id):
                    ok = submit.wait(instance, run_id) == dg.DagsterRunStatus.SUCCESS
            except RuntimeError as exc:  # the launch failed, or the run never left the queue: say so, plainly
                print(f"error: {exc}", file=sys.stderr)
                ok = False
            rows += console.rows.values()
            if not ok:
                break
    summary(rows, f"{title}: {'succeeded' if ok else 'FAILED'}")
    ui = "make ui-postgres" if os.environ.get(storage.STORAGE_ENV) == "postgres" else "make ui"
    print(f"Dagster runs: `{ui}` (stored in {os.environ['DAGSTER_HOME']}); event log: {log_file}")
    return 0 if ok else 1


@contextlib.contextmanager
def _to_file(log):
    """Send this process's stdout and stderr to `log`, at the file-descriptor level too: a library that
    kept its own handle on the terminal (DVC's console) writes there as well."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def quiet_console(verbose: bool) -> None:
    """Jobs started from here send their ranks' and steps' output to files in their run folders (the
    launcher reads VISIONFLOW_CONSOLE), and library warnings stay off the terminal, unless --verbose."""
    if verbose:
        return
    os.environ.setdefault("VISIONFLOW_CONSOLE", "compact")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.WARNING)


def studies(root: Path, verbose: bool = False) -> int:
    """The `studies` job (search, the six studies, the report) on the prepared sets, through Dagster."""
    prepared = all((root / "prepared" / name / "manifest.json").is_file() for name in ("imagenet", "transfer"))
    jobs: list[tuple[str, str | None]] = [] if prepared else [("observe_raw_data", None), ("data", None)]
    code = _run_jobs(root, [*jobs, ("studies", None)], "visionflow studies", verbose)
    print(f"The report: {root / 'runs' / 'studies' / 'studies_report.md'} (and the studies_report asset in `make ui`).")
    return code


def ui(root: Path, port: int, mlflow_port: int = 5000) -> int:
    """MLflow's UI (a server on the project's store) and `dagster dev` (webserver + daemon), on 127.0.0.1."""
    chosen = storage.configure(root)
    bin_dir = Path(sys.executable).parent
    uri = chosen.mlflow_uri
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
    print(f"Records: {chosen.kind} (Dagster home {chosen.dagster_home})")
    from pipelines.submit import daemon_lock  # lazy: imports Dagster

    mlflow_proc = subprocess.Popen(mlflow_cmd)
    # Holding the lock tells `make run` that this daemon will start its runs (see pipelines/submit.py).
    lock = daemon_lock()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print("another visionflow command runs this instance's daemon (`make run`?): stop it first")
        mlflow_proc.terminate()
        return 1
    try:
        return subprocess.call(dagster_cmd)
    except KeyboardInterrupt:
        return 0
    finally:
        lock.release()
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
    p.add_argument(
        "--postgres",
        action="store_true",
        help=f"records in PostgreSQL ({storage.STORAGE_ENV}=postgres): ${storage.URL_ENV}, else a local server",
    )
    a = p.parse_args(argv)
    root = project_root()
    os.chdir(root)
    if a.postgres:  # the daemon, the webserver and the runs they start read it too
        os.environ[storage.STORAGE_ENV] = "postgres"
    try:
        if a.command == "run":
            return run(root, a.arch, a.detector, verbose=a.verbose)
        return studies(root, verbose=a.verbose) if a.command == "studies" else ui(root, a.port, a.mlflow_port)
    except VisionflowError as exc:  # the storage could not be set up (no PostgreSQL, a bad URL): say what to do
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
