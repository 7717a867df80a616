"""The Dagster code location: `dagster dev` loads it through workspace.yaml."""

import dagster as dg

from pipelines.assets.data import DATA_ASSETS, raw_data
from pipelines.assets.evaluation import EVALUATION_ASSETS
from pipelines.assets.training import TRAINING_ASSETS
from pipelines.automation import new_data_version, weekly_retraining
from pipelines.jobs import version_data
from pipelines.resources import default_resources

# An observable source is observed by a job of its own (asset jobs only materialize).
observe_job = dg.define_asset_job("observe_raw_data", selection=[raw_data], description="Record the data.dvc version.")
data_job = dg.define_asset_job(
    "data", selection=dg.AssetSelection.groups("data"),
    description="Observe the raw data version and prepare every dataset.",
)
# The whole chain. Launch it with a partition (the architecture to pretrain; `make run` uses resnet18).
main_job = dg.define_asset_job(
    "main", selection=dg.AssetSelection.all(),
    description="Data -> pretraining -> transfer + scratch -> report -> evaluation.",
)

defs = dg.Definitions(
    assets=[*DATA_ASSETS, *TRAINING_ASSETS, *EVALUATION_ASSETS],
    jobs=[observe_job, data_job, main_job, version_data],
    schedules=[weekly_retraining(main_job)],
    sensors=[new_data_version(main_job)],
    resources=default_resources(),
)
