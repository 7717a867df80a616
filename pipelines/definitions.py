"""The Dagster code location: `dagster dev` loads it through workspace.yaml."""

from __future__ import annotations

import dagster as dg

from pipelines.assets.data import DATA_ASSETS, raw_data
from pipelines.resources import default_resources

# An observable source is observed by a job of its own (asset jobs only materialize).
observe_job = dg.define_asset_job("observe_raw_data", selection=[raw_data], description="Record the data.dvc version.")
data_job = dg.define_asset_job(
    "data", selection=dg.AssetSelection.groups("data"),
    description="Observe the raw data version and prepare every dataset.",
)
# The whole chain; later stages (pretraining, transfer, YOLO, evaluation) join it as they land.
main_job = dg.define_asset_job("main", selection=dg.AssetSelection.all(), description="The whole visionflow chain.")

defs = dg.Definitions(assets=DATA_ASSETS, jobs=[observe_job, data_job, main_job], resources=default_resources())
