"""The Dagster code location: `dagster dev` loads it through workspace.yaml."""

import dagster as dg

from pipelines.assets.data import DATA_ASSETS, raw_data
from pipelines.assets.detection import DETECTION_ASSETS
from pipelines.assets.detection_transfer import DETECTION_TRANSFER_ASSETS
from pipelines.assets.evaluation import EVALUATION_ASSETS
from pipelines.assets.search import SEARCH_ASSETS
from pipelines.assets.studies import STUDY_ASSETS_ALL
from pipelines.assets.training import TRAINING_ASSETS
from pipelines.automation import detection_after_main, new_data_version, weekly_retraining
from pipelines.jobs import version_data
from pipelines.resources import default_resources


def launchpad_defaults(training_assets: list[str]) -> dict:
    """The Launchpad's starting config: the training assets' `overrides` and `extra_config_files`, empty,
    so users see where a KEY=VALUE or an overlay file goes (fields with defaults are otherwise hidden)."""
    shown: dict[str, list[str]] = {"overrides": [], "extra_config_files": []}
    return {"ops": {name: {"config": dict(shown)} for name in training_assets}}


# An observable source is observed by a job of its own (asset jobs only materialize).
observe_job = dg.define_asset_job("observe_raw_data", selection=[raw_data], description="Record the data.dvc version.")
data_job = dg.define_asset_job(
    "data",
    selection=dg.AssetSelection.groups("data"),
    description="Prepare every dataset from the raw data (observe_raw_data records its version; `make run` does both).",
)
# The classification chain. Launch it with a partition (the architecture to pretrain; `make run` uses resnet18).
main_job = dg.define_asset_job(
    "main",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("detection", "detection_transfer", "studies"),
    description="Data -> pretraining -> transfer + scratch -> report -> evaluation.",
    config=launchpad_defaults(["pretrained_backbone", "transfer_finetuned", "scratch_baseline"]),
)
# The detection stage, partitioned by YOLO version (`make run` uses yolov3); after a successful `main`
# run the detection_after_main sensor starts it on the new backbone.
detection_job = dg.define_asset_job(
    "detection",
    selection=dg.AssetSelection.groups("detection"),
    description="YOLO detector on the latest pretrained backbone -> detection evaluation (mAP, registry).",
    config=launchpad_defaults(["yolo_detector"]),
)
# Backbone transfer for detection: the same detector from scratch, and the report (a second detector fit).
detection_transfer_job = dg.define_asset_job(
    "detection_transfer",
    selection=dg.AssetSelection.groups("detection_transfer"),
    description="The detector from random weights at the same budget -> detection_transfer_report.",
)
# The lessons as measured studies and the hyperparameter search (a few CPU minutes each), then the report.
studies_job = dg.define_asset_job(
    "studies",
    selection=dg.AssetSelection.groups("studies"),
    description="hparam_search, the six studies and studies_report (needs the prepared sets).",
)

defs = dg.Definitions(
    assets=[
        *DATA_ASSETS,
        *TRAINING_ASSETS,
        *EVALUATION_ASSETS,
        *DETECTION_ASSETS,
        *DETECTION_TRANSFER_ASSETS,
        *SEARCH_ASSETS,
        *STUDY_ASSETS_ALL,
    ],
    jobs=[observe_job, data_job, main_job, detection_job, detection_transfer_job, studies_job, version_data],
    schedules=[weekly_retraining(main_job)],
    sensors=[new_data_version(main_job), detection_after_main(main_job, detection_job)],
    resources=default_resources(),
)
