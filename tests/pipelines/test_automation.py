"""Retraining automation evaluated against a real Dagster instance: the weekly schedule and the new-data sensor."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from lightning_modules.data import versioning
from pipelines.automation import DETECTION_TAG
from pipelines.definitions import defs
from pipelines.resources import DvcResource


def _tracked_project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("one")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    versioning.init(root, str(tmp_path / "remote"))
    versioning.add(root)
    return root


def _tick(sensor, instance, cursor, dvc):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"dvc": dvc}, definitions=defs)
    result = sensor(ctx)
    requests = result if isinstance(result, list) else [result]
    return [r for r in requests if isinstance(r, dg.RunRequest)], ctx.cursor


def test_new_data_version_sensor_requests_one_run_per_new_md5(tmp_path: Path) -> None:
    root = _tracked_project(tmp_path)
    dvc = DvcResource(root=str(root))
    sensor = defs.resolve_sensor_def("new_data_version")
    with dg.instance_for_test() as instance:
        runs, cursor = _tick(sensor, instance, None, dvc)
        assert runs == [] and cursor == dvc.data_version(), "first tick only records the version"
        runs, cursor = _tick(sensor, instance, cursor, dvc)
        assert runs == [], "unchanged md5: no run"

        (root / "data" / "a.txt").write_text("two")
        new = versioning.add(root)
        runs, cursor = _tick(sensor, instance, cursor, dvc)
        assert len(runs) == 1 and cursor == new
        assert runs[0].run_key == f"data-{new}" and runs[0].partition_key == "resnet18"
        assert runs[0].tags["data_version"] == new
        runs, cursor = _tick(sensor, instance, cursor, dvc)
        assert runs == []


def test_weekly_schedule_requests_the_main_job_once_a_week() -> None:
    schedule = defs.resolve_schedule_def("weekly_retraining")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == "main"
    # Cron fields: minute 0, hour 3, any day of month, any month, weekday 1 (Monday): once a week.
    assert schedule.cron_schedule.split() == ["0", "3", "*", "*", "1"]
    monday = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
    # One tick per test: a second schedule context left Dagster holding a closed test instance.
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=monday, repository_def=defs.get_repository_def()
        )
        data = schedule.evaluate_tick(ctx)
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.partition_key == "resnet18" and request.run_key == "weekly-2026-11-30"


def test_version_data_job_adds_and_pushes_new_data(tmp_path: Path) -> None:
    root = _tracked_project(tmp_path)
    before = versioning.read_data_version(root / "data.dvc")
    (root / "data" / "b.txt").write_text("new file")
    job = defs.resolve_job_def("version_data")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, resources={"dvc": DvcResource(root=str(root))})
    assert result.success
    after = versioning.read_data_version(root / "data.dvc")
    assert after != before and result.output_for_node("dvc_add_and_push") == after
    assert versioning.status(root)["cloud"] == {}, "everything was pushed"


@pytest.mark.parametrize("tags, wants_detection", [({}, True), ({DETECTION_TAG: "launched-separately"}, False)])
def test_a_successful_main_run_brings_detection_unless_it_launches_its_own(tags, wants_detection) -> None:
    """`make run` launches the detector it was asked for itself and tags its main run so; a main run from the
    UI or a schedule gets the default detector from the sensor."""

    @dg.op
    def noop() -> None:
        pass

    @dg.job(name="main")
    def main_stand_in() -> None:
        noop()

    sensor = defs.resolve_sensor_def("detection_after_main")
    with dg.instance_for_test() as instance:
        result = main_stand_in.execute_in_process(instance=instance, tags=tags)
        ctx = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=result.get_run_success_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
        )
        outcome = sensor(ctx)
    if wants_detection:
        assert isinstance(outcome, dg.RunRequest) and outcome.partition_key == "yolov3"
        assert outcome.tags["main_run_id"] == result.run_id
    else:
        assert isinstance(outcome, dg.SkipReason) and "launches its own detection run" in str(outcome.skip_message)
