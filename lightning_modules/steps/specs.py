"""What each step needs, as typed specs the Dagster side writes to JSON and the step reads back."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    out: str = Field(description="the step's folder (figures, JSON), the asset's run folder")
    tracking_uri: str
    run_id: str = Field(description="the MLflow run the launcher created with the Dagster lineage tags")
    mlflow_ui: str = "http://127.0.0.1:5000"

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


class ClassificationEvaluationSpec(StepSpec):
    checkpoint: str
    data: str = Field(description="the prepared set whose held-out split is scored")
    split: str = "test"
    model_name: str = "visionflow-classifier"
    accuracy_floor: float = 0.4
    margin_over_chance: float = 0.2


class DetectionEvaluationSpec(StepSpec):
    checkpoint: str
    data: str
    split: str = "val"
    model_name: str = Field(description="registered model name, the YOLO version appended")
    map50_floor: float = 0.05


class TransferReportSpec(StepSpec):
    transfer_history: list[dict]
    scratch_history: list[dict]
    early_epochs: int = Field(3, ge=1)
