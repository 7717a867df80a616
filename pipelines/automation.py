"""Retraining: every week, and whenever the data version (the md5 in data.dvc) changes.

A schedule and a sensor rather than per-asset `on_cron` / eager conditions: the chain mixes a
partitioned stage (pretrained_backbone) with unpartitioned ones, and one run request carrying one
partition key runs all of them together, on one data version, in one Dagster run. Both launch
the `main` job and ship switched off: turn them on in the UI (Automation). The detection stage
(partitioned by YOLO version) runs as its own job right after each successful `main` run, so every
retraining also retrains the detector on the new backbone.
"""

import dagster as dg

from pipelines.assets.detection import DEFAULT_VERSION
from pipelines.assets.training import DEFAULT_ARCH
from pipelines.resources import DvcResource

RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00
# A main run tagged DETECTION_TAG=launched-separately gets no detection run from the sensor: `make run`
# launches its own (the detector it was asked for), and two would compete for the pool.
DETECTION_TAG = "visionflow/detection"


def weekly_retraining(job) -> dg.ScheduleDefinition:
    @dg.schedule(
        job=job,
        cron_schedule=RETRAIN_CRON,
        name="weekly_retraining",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Retrain the whole chain on the current data every week.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time.strftime("%Y-%m-%d")
        return dg.RunRequest(run_key=f"weekly-{tick}", partition_key=DEFAULT_ARCH, tags={"trigger": "weekly"})

    return _schedule


def new_data_version(job) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        name="new_data_version",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Rerun the chain when data.dvc names a new data version.",
    )
    def _sensor(context: dg.SensorEvaluationContext, dvc: DvcResource):
        version = dvc.data_version()
        if version is None:
            return dg.SkipReason("no data.dvc: the data is not versioned yet")
        if context.cursor is None:
            # First look: remember the version in use; only later changes trigger retraining.
            context.update_cursor(version)
            return dg.SkipReason(f"recorded data version {version}")
        if version == context.cursor:
            return dg.SkipReason(f"data version unchanged ({version})")
        context.update_cursor(version)
        return dg.RunRequest(
            run_key=f"data-{version}", partition_key=DEFAULT_ARCH, tags={"trigger": "new_data", "data_version": version}
        )

    return _sensor


def detection_after_main(main_job, detection_job) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[main_job],
        request_job=detection_job,
        name="detection_after_main",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Train and evaluate the default YOLO detector after each successful main run.",
    )
    def _sensor(context: dg.RunStatusSensorContext):
        run = context.dagster_run
        if run.tags.get(DETECTION_TAG) == "launched-separately":
            return dg.SkipReason(f"run {run.run_id} launches its own detection run (`make run`)")
        return dg.RunRequest(
            run_key=f"after-{run.run_id}",
            partition_key=DEFAULT_VERSION,
            tags={"trigger": "after_main", "main_run_id": run.run_id},
        )

    return _sensor
