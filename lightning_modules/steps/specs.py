"""What each step needs, as typed specs the Dagster side writes to JSON and the step reads back."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lightning_modules.data.prep_settings import ClassificationPrepSettings, DetectionPrepSettings


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    out: str = Field(description="the step's folder (figures, JSON), the asset's run folder")

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


class TrackedStepSpec(StepSpec):
    """A step that logs into an MLflow run (the asset created it with the Dagster lineage tags)."""

    tracking_uri: str
    run_id: str = Field(description="the MLflow run the launcher created with the Dagster lineage tags")
    mlflow_ui: str = "http://127.0.0.1:5000"


class ClassificationPrepSpec(StepSpec):
    source: str = Field(description="the raw ImageFolder-style source")
    prepared: str = Field(description="where the prepared set goes (replaced atomically)")
    settings: ClassificationPrepSettings
    source_data_version: str | None = Field(None, description="DVC md5 of data/, None when data/ changed since")
    rejected_warn_fraction: float = Field(0.01, ge=0, le=1)


class DetectionPrepSpec(StepSpec):
    source: str
    prepared: str
    settings: DetectionPrepSettings
    source_data_version: str | None = None
    rejected_warn_fraction: float = Field(0.01, ge=0, le=1)
    bpr_floor: float = Field(0.95, ge=0)


class SearchSpec(StepSpec):
    search_file: str = Field(description="the search YAML (space, sampler, pruner, budget)")
    data: str = Field(description="the prepared set searched on")
    parallel: int = Field(0, ge=0, description="trials at once; 0 = the search file's `parallel`")
    tracking_uri: str
    best_file: str = Field(description="a stable copy of best.yaml, the overlay pretrained_backbone takes")
    mlflow_ui: str = "http://127.0.0.1:5000"


class ClassificationEvaluationSpec(TrackedStepSpec):
    checkpoint: str
    data: str = Field(description="the prepared set whose held-out split is scored")
    split: str = "test"
    model_name: str = "visionflow-classifier"
    accuracy_floor: float = 0.4
    margin_over_chance: float = 0.2


class DetectionEvaluationSpec(TrackedStepSpec):
    checkpoint: str
    data: str
    split: str = "val"
    model_name: str = Field(description="registered model name, the YOLO version appended")
    map50_floor: float = 0.05


class TransferReportSpec(TrackedStepSpec):
    transfer_history: list[dict]
    scratch_history: list[dict]
    early_epochs: int = Field(3, ge=1)
