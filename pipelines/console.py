"""What `make run` shows: a line per step as it starts and ends (with its wall time), training epochs as a
Rich progress bar per step on a terminal (a few epoch lines when the output is a file), and at the end a
summary table (stage, key numbers, checks, what was registered or promoted and why, where to look).
Dagster's own event stream, every event of the run, goes to a log file instead
(`runs/console/<time>-<job>.log`); `--verbose` prints it as well.

It follows the run from the instance's event log (the same events the UI shows) in a thread beside the
executing job, so nothing in the job changes for the console's sake.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from pipelines.assets.studies import STUDY_ASSETS

# The numbers a user looks for first, per asset (the rest stay in the asset's metadata and MLflow).
KEY_NUMBERS = {
    "prepared_imagenet": ("classes", "train_images", "val_images", "rejected"),
    "prepared_transfer": ("classes", "train_images", "val_images", "rejected"),
    "prepared_detection": ("train_images", "val_images", "test_images", "boxes"),
    "pretrained_backbone": ("val_acc1", "val_acc5", "epochs"),
    "transfer_finetuned": ("val_acc1_best", "epochs"),
    "scratch_baseline": ("val_acc1_best", "epochs"),
    "transfer_report": ("gain_start", "gain_slope", "gain_asymptote"),
    "classification_evaluation": ("test_acc1", "test_acc5", "images"),
    "yolo_detector": ("val_map", "val_map_50", "epochs"),
    "detection_evaluation": ("test_map", "test_map_50", "images"),
    **{study: ("verdict", "seconds") for study in STUDY_ASSETS},
}


# "epoch 3/20: train_loss 1.2, val_acc1 0.4" as the job's Pipes reporter logs it (the total is optional), and
# "study dropout: 4/9" as a study step counts its jobs (progress.track); a study's or a search's own jobs log
# epochs too, which its count line stands for.
EPOCH_LINE = re.compile(r"epoch (\d+)(?:/(\d+))?: (?=.*loss)")
COUNT_LINE = re.compile(r"study \S+: (\d+)/(\d+)")
MANY_JOBS = ("_study", "hparam_search")
EPOCH_LINES_PER_STEP = 4  # without a terminal: the first, about this many between, and the last epoch


@dataclass
class StepRow:
    step: str
    started: float | None = None
    ended: float | None = None
    ok: bool | None = None
    numbers: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    registry: str = ""
    where: str = ""

    @property
    def seconds(self) -> float | None:
        return self.ended - self.started if self.started and self.ended else None


class RunConsole:
    """Follows one run's events: prints progress, writes the full stream to `log_file`, keeps the rows."""

    def __init__(
        self, instance: dg.DagsterInstance, log_file: Path, *, verbose: bool = False, live: bool | None = None
    ):
        self.instance, self.log_file, self.verbose = instance, log_file, verbose
        self.rows: dict[str, StepRow] = {}
        self._cursor: str | None = None
        # a progress bar per training step on a terminal; `live=None` asks whether stdout is one
        self.progress = _progress() if (sys.stdout.isatty() if live is None else live) and not verbose else None
        self._bars: dict[str, Any] = {}

    @contextmanager
    def follow(self, run_id: str):
        """Print the run's progress while the body executes it (the run must use `run_id`)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        with self.log_file.open("a") as log:
            if self.progress is not None:
                self.progress.start()
            thread = threading.Thread(target=self._poll, args=(run_id, log, stop), daemon=True)
            thread.start()
            try:
                yield self
            finally:
                stop.set()
                thread.join()
                self._drain(run_id, log)
                if self.progress is not None:
                    self.progress.stop()

    def _poll(self, run_id: str, log, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            self._drain(run_id, log)

    def _drain(self, run_id: str, log) -> None:
        while True:
            batch = self.instance.get_records_for_run(run_id, cursor=self._cursor, limit=500)
            for record in batch.records:
                self._on(record.event_log_entry, log)
            self._cursor = batch.cursor
            if not batch.has_more:
                log.flush()
                return

    def _on(self, entry, log) -> None:
        event, step = entry.dagster_event, entry.step_key
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.timestamp))
        kind_name = event.event_type_value if event is not None else "LOG"
        line = f"{stamp} {kind_name:<24} {step or '-'}: {entry.message}"
        if event is not None and event.event_type == dg.DagsterEventType.STEP_FAILURE:
            line += f" | {_failure(event)}"
        log.write(line + "\n")
        if self.verbose:
            print(line, flush=True)
        if event is None:
            message = entry.user_message or ""
            count = COUNT_LINE.match(message)
            epoch = None if step and step.endswith(MANY_JOBS) else EPOCH_LINE.match(message)
            if step and (count or epoch):
                found = count or epoch
                assert found is not None
                self._epoch(step, int(found[1]), int(found[2]) if found[2] else None, message)
            return
        row = self.rows.setdefault(step, StepRow(step)) if step else None
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START and row:
            row.started = entry.timestamp
            self._say(f"  > {step} started")
        elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and row:
            row.ended, row.ok = entry.timestamp, kind == dg.DagsterEventType.STEP_SUCCESS
            if step in self._bars and self.progress is not None:  # the "ok" line below takes its place
                self.progress.update(self._bars.pop(step), visible=False)
            why = "" if row.ok else f": {_failure(event) or _first_line(entry.message)}"
            self._say(f"  {'ok' if row.ok else 'FAILED'} {step} ({_duration(row.seconds)}){why}")
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION and row:
            self._materialized(row, event.step_materialization_data.materialization)
        elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION and row:
            data = event.asset_check_evaluation_data
            row.checks[data.check_name] = data.passed

    def _epoch(self, step: str, epoch: int, total: int | None, message: str) -> None:
        if self.progress is not None:
            if step not in self._bars:
                self._bars[step] = self.progress.add_task(step, total=total)
            self.progress.update(self._bars[step], completed=epoch, total=total, description=f"{step}: {message}")
            return
        every = math.ceil(total / EPOCH_LINES_PER_STEP) if total else 1
        if epoch == 1 or epoch == total or epoch % every == 0:
            self._say(f"    {step}: {message}")

    def _materialized(self, row: StepRow, materialization: dg.AssetMaterialization) -> None:
        meta = {k: v.value for k, v in materialization.metadata.items()}
        asset = materialization.asset_key.to_user_string()
        row.numbers = {k: meta[k] for k in KEY_NUMBERS.get(asset, ()) if meta.get(k) is not None}
        if "registered_version" in meta:
            model = meta.get("registered_model", "visionflow-classifier")
            verdict = "promoted to champion" if meta.get("promoted") else "not promoted"
            row.registry = f"{model} v{meta['registered_version']}: {verdict} ({meta.get('promotion', '')})"
        row.where = str(meta.get("mlflow_run") or meta.get("run_dir") or meta.get("path") or "")

    @staticmethod
    def _say(text: str) -> None:
        print(text, flush=True)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # lazy: as below

    # transient: a finished step's bar gives way to its "ok" line
    return Progress(
        TextColumn("    "),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        transient=True,
    )


def _failure(event) -> str:
    """A failed step's own description (dg.Failure), else its error's first line."""
    data = event.step_failure_data
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return _first_line(user.description)
    return _first_line(data.error.message) if data.error else ""


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:200] if text else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary(rows: list[StepRow], title: str) -> None:
    """The table printed last: one row per step, then what was registered and where to look."""
    from rich.console import Console  # lazy: only the run command prints tables
    from rich.table import Table  # lazy: as above

    rows = sorted(rows, key=lambda r: r.started or float("inf"))  # in the order they ran
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("stage", "time", "key numbers", "checks"):
        table.add_column(column, overflow="fold")
    for r in rows:
        checks = ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in r.checks.items()) or "-"
        status = "" if r.ok is not False else " (FAILED)"
        numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in r.numbers.items()) or "-"
        table.add_row(r.step + status, _duration(r.seconds), numbers, checks)
    console = Console(width=max(120, Console().width))
    console.print(table)
    for r in rows:
        if r.registry:
            console.print(f"registry: {r.registry}", overflow="fold")
    for r in rows:
        if r.where:  # plain print: a link must stay whole to be clicked
            print(f"{r.step}: {r.where}")
