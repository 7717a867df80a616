"""What each step needs, as typed specs the Dagster side writes to JSON and the step reads back."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lightning_modules.data.prep_settings import ClassificationPrepSettings, DetectionPrepSettings


class Settings(BaseModel):
    """What a user sets for a step. The Dagster asset's config embeds the same model (`class
    EvaluationConfig(dg.Config, ClassificationEvaluationSettings)`), so each default exists once."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ClassificationEvaluationSettings(Settings):
    split: str = Field("test", description="held-out split of prepared_transfer; never used for model selection")
    # The default chain measured 0.56 test top-1 on its 5 classes; from scratch, 0.22 (chance 0.20).
    accuracy_floor: float = Field(
        0.4,
        ge=0,
        description="quality gate: minimum top-1 on the held-out split (the default chain measures 0.56; a "
        "model that learned nothing stays near chance)",
    )
    margin_over_chance: float = Field(
        0.2, ge=0, le=1, description="the gate is also at least chance (1/classes) + this margin"
    )
    model_name: str = Field("visionflow-classifier", description="registered model name in MLflow")


class DetectionEvaluationSettings(Settings):
    split: str = Field(
        "test",
        description="held-out split of prepared_detection to score, in the images' own pixels; never used for "
        "model selection (best checkpoint, early stopping and search see only val)",
    )
    # The default chain measures 0.868 test mAP@0.5 on its 150 test images; a broken detector scores ~0.
    map50_floor: float = Field(
        0.43, ge=0, description="quality gate: minimum mAP@0.5 on the held-out split (half what the default reaches)"
    )
    model_name: str = Field("visionflow-detector", description="registered model name; the version is appended")


class TransferReportSettings(Settings):
    early_epochs: int = Field(3, ge=1, description="the slope is the mean gain per epoch over this many first epochs")


class SearchSettings(Settings):
    search_file: str = Field(
        "configs/search-cpu.yaml",
        description="search YAML (space, sampler, pruner, budget), relative to the project root",
    )
    data: str = Field("imagenet", description="prepared set to search on (prepared/<data>)")
    parallel: int = Field(0, ge=0, description="trials at once; 0 = the search file's `parallel`")


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
    settings: SearchSettings = Field(description="search_file and data as paths (resolved by the asset)")
    tracking_uri: str
    best_file: str = Field(description="a stable copy of best.yaml, the overlay pretrained_backbone takes")
    mlflow_ui: str = "http://127.0.0.1:5000"


class StudySpec(StepSpec):
    """One measured study (studies/); `out` is the study's folder, which keeps its finished jobs."""

    study: str = Field(description="a name in lightning_modules.studies.STUDIES")
    data: str = Field(description="the prepared set the study trains on")
    size: str = Field("default", description="default, tiny or paper")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE for every job")
    seeds: list[int] | None = Field(None, description="None: the study's default seeds")
    tracking_uri: str
    mlflow_ui: str = "http://127.0.0.1:5000"


class ClassificationEvaluationSpec(TrackedStepSpec):
    checkpoint: str
    data: str = Field(description="the prepared set whose held-out split is scored")
    settings: ClassificationEvaluationSettings


class DetectionEvaluationSpec(TrackedStepSpec):
    checkpoint: str
    data: str
    settings: DetectionEvaluationSettings = Field(description="model_name with the YOLO version appended")


class TransferReportSpec(TrackedStepSpec):
    transfer_history: list[dict]
    scratch_history: list[dict]
    metric: str = Field("val_acc1", description="the history column compared: val_acc1, or val_map for detection")
    title: str = "transfer vs scratch"
    settings: TransferReportSettings
