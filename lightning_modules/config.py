"""Training job configuration: pydantic models loaded from YAML, with `--set a.b=value` overrides.

A job config is one YAML file (optionally followed by overlay files such as a run's
`tuned.yaml`) with the sections below; every key is checked, so a typo is a
`ConfigError` naming the file and the key instead of a silently ignored setting.
The defaults live here, in the models, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lightning_modules.config_messages import check_keys, message
from lightning_modules.errors import ConfigError


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # lax pydantic would read `lr: true` as 1.0
        raise PydanticCustomError("float_type", "must be a number, not true/false")
    return value


# Ints, floats and numeric strings ("1e-3": YAML 1.1 reads it as a string) become floats; booleans don't.
Float = Annotated[float, BeforeValidator(_not_bool)]
# Ints stay exact: 4.0, "4" and true are refused (a batch count is not a fraction).
Int = StrictInt
Bool = StrictBool
Positive = Field(gt=0)
NonNegative = Field(ge=0)
Probability = Field(ge=0, le=1)
Weight = Annotated[Float, NonNegative]


class Section(BaseModel):
    """Unknown keys, NaN and inf fail; numbers are accepted where a string is expected (`name: 18`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, coerce_numbers_to_str=True)


S = TypeVar("S", bound=Section)


def from_saved(section: type[S], values: Mapping[str, Any] | Section) -> S:
    """A section from a checkpoint's hyper-parameters (saved as plain dicts, so a weights-only load can
    read them): keys this version no longer has are dropped, so a checkpoint of an older version still
    loads; the rest is validated and missing keys take today's defaults."""
    if isinstance(values, section):
        return values
    known = {k: v for k, v in dict(values).items() if k in section.model_fields}
    return section.model_validate(known)


class DropoutConfig(Section):
    """Dropout probability per layer group; never applied after the output layer.

    input: element-wise dropout on the input image (first module of the body). blocks: Dropout2d after
    each conv stage (ResNet layer, VGG/Darknet pooling stage). classifier: dropout right before the final
    Linear (`head.fc`), and VGG's own two classifier dropouts. A single number sets all three.
    """

    input: Annotated[Float, Field(ge=0, lt=1)] = 0.0
    blocks: Annotated[Float, Field(ge=0, lt=1)] = 0.0
    classifier: Annotated[Float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _one_number(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # `model.dropout=0.3`
            return {"input": value, "blocks": value, "classifier": value}
        return value


class ModelConfig(Section):
    name: str = "resnet18"
    width: Annotated[Float, Positive] = 1.0
    activation: str = "default"  # "default": the architecture's own; else a name in ACTIVATIONS
    # Per layer group, or one number for all (None: the architecture's default, VGG 0.5 in the classifier).
    dropout: DropoutConfig | None = None
    small_input: Bool = False
    # The stem's downsampling (ResNet/plain): None = the layout's own (4, or 1 with small_input). A
    # detector on a small-input backbone sets 4: same weights, levels at strides 8/16/32, 1/16 the cost.
    stem_stride: Literal[1, 2, 4] | None = None
    # Transfer: our Lightning checkpoint (or a state_dict) whose body initialises the model; the
    # classifier starts fresh for this job's classes. The architecture must match (ConfigError).
    pretrained_checkpoint: str | None = None
    # Transfer from torchvision: a saved torchvision ImageNet state dict (models.backbone.load_torchvision_weights).
    torchvision_weights: str | None = None

    @model_validator(mode="after")
    def _one_init(self) -> ModelConfig:
        if self.pretrained_checkpoint and self.torchvision_weights:
            raise ValueError("set model.pretrained_checkpoint or model.torchvision_weights, not both")
        return self


class DataConfig(Section):
    batch_size: Annotated[Int, Positive] = 64  # per device
    num_workers: Annotated[Int, NonNegative] = 2
    image_size: Annotated[Int, Positive] | None = None  # None: the prepared manifest's image_size
    # Train split: random resized crop + horizontal flip (+ colour jitter), drawn per image and applied to
    # whole batches (classification/batch_augment.py), where `augment_on` says: "device" after the batch
    # reached the GPU, "loader" in the loader's workers (on a CPU the training process has no spare core);
    # "auto": device when the job trains on a GPU, else loader.
    augment: Bool = True
    augment_on: Literal["auto", "loader", "device"] = "auto"
    crop_scale_min: Annotated[Float, Field(gt=0, le=1)] = 0.35
    color_jitter: Annotated[Float, Field(ge=0, lt=1)] = 0.0  # brightness/contrast/saturation factor in 1 +- this
    shuffle: Bool = True


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[Float, Positive] = 0.1
    momentum: Float = 0.9
    nesterov: Bool = False
    weight_decay: Float = 5e-4
    # When set, lr is given for this batch and scaled linearly to the effective batch.
    reference_batch: Annotated[Int, Positive] | None = None
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "cosine"
    warmup_epochs: Annotated[Float, NonNegative] = 0.0  # at most trainer.max_epochs
    step_size: Int = 30  # epochs, for schedule "step"
    gamma: Float = 0.1
    min_lr_ratio: Float = 0.0  # cosine floor as a fraction of lr
    # Fine-tuning: the body (feature extractor) is frozen for this many epochs (no gradients, batch
    # norm statistics fixed), so the fresh classifier settles before it can disturb the body.
    freeze_body_epochs: Annotated[Int, NonNegative] = 0  # at most trainer.max_epochs
    body_lr_mult: Annotated[Float, NonNegative] = 1.0  # the body's LR = lr x this (0.1: fine-tune the body gently)


class LossConfig(Section):
    name: str = "cross_entropy"
    label_smoothing: Annotated[Float, Field(ge=0, lt=1)] = 0.0


class TrainerConfig(Section):
    max_epochs: Annotated[Int, Positive] = 10
    # A wall-clock budget for the fit, "DD:HH:MM:SS" (Lightning's max_time): the run stops when it is
    # spent, and the LR schedule is re-planned to the steps that fit once the first epoch shows the pace.
    max_time: Annotated[str, Field(pattern=r"^\d{2}:\d{2}:\d{2}:\d{2}$")] | None = None
    devices: Annotated[Int, Positive] = 1
    num_nodes: Annotated[Int, Positive] = 1
    accelerator: Literal["cpu", "gpu", "cuda", "auto"] = "cpu"
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    channels_last: Bool = False
    compile: Bool = False
    accumulate_grad_batches: Annotated[Int, Positive] = 1
    # DDP sends gradients as 16-bit floats: half the all-reduce bytes, at the cost of rounding them.
    # auto: bf16 on CPU ranks (gloo; the same learning in bench/ddp_compression.py, a little faster in
    # bench/training.py), none on CUDA (training/trainer.py: ddp_compression).
    ddp_compression: Literal["auto", "none", "fp16", "bf16"] = "auto"
    seed: Int = 0
    early_stopping_patience: Int | None = None  # epochs without val/loss improvement; None: off
    checkpoint_every_n_steps: Annotated[Int, Positive] = 200
    limit_train_batches: Float | Int | None = None  # 4: batches, 0.5: a fraction (the type is kept)
    limit_val_batches: Float | Int | None = None
    fast_dev_run: Bool = False
    gradient_clip_val: Float | None = None
    log_every_n_steps: Int = 50
    grad_monitor_every_n_steps: Int = 50  # 0: gradient flow monitor off
    nan_guard: Bool = True
    nan_check_every_n_steps: Annotated[Int, Positive] = 10  # gradients (and a GPU's loss) every N steps
    deterministic: Bool = False

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # `precision: 32`


class DetectionConfig(Section):
    """The YOLO stage (task: detection). Input size is data.image_size (default 416)."""

    version: str = "yolov3"  # a name in detection.models.DETECTORS
    # (w, h) pixels at data.image_size; None: the prepared set's k-means anchors (v2: 5, v3: 9), rescaled.
    anchors: list[list[Float]] | None = None
    box_loss: Literal["giou", "ciou", "mse"] = "ciou"  # v3
    # The head's hidden channels relative to the paper's (at the model's width): 0.5 halves the neck.
    neck_width: Annotated[Float, Positive] = 1.0
    # v3 assignment: "v3" one best anchor in the centre cell; "v5" every anchor within anchor_t of the
    # object's size, in the centre cell and its two nearest neighbours (grid-sensitive decoding).
    assign: Literal["v3", "v5"] = "v3"
    anchor_t: Annotated[Float, Field(gt=1)] = 4.0
    ignore_iou: Annotated[Float, Probability] | None = 0.5  # v3: no objectness penalty above this IoU
    obj_target: Literal["one", "iou"] = "one"  # v3: objectness target at positives
    obj_norm: Literal["positives", "cells"] = "positives"  # v3: see losses.YoloV3Loss
    label_smoothing: Annotated[Float, Field(ge=0, lt=1)] = 0.0  # v3: class BCE targets 1 - eps/2, eps/2
    # v3: box, obj, cls (a list, as the run folder's config.yaml reads back)
    loss_weights: Annotated[list[Weight], Field(min_length=3, max_length=3)] = [5.0, 1.0, 1.0]
    grid: Annotated[Int, Positive] = 7  # v1: S
    boxes: Annotated[Int, Positive] = 2  # v1: B
    # Multi-scale training (YOLOv2): every `multiscale_every` batches the batch is resized to one of
    # these sizes (multiples of 32); the same choice on every rank. None: fixed size.
    multiscale: list[Int] | None = None
    multiscale_every: Annotated[Int, Positive] = 10
    mosaic_prob: Annotated[Float, Probability] = 0.5
    affine: Bool = True
    hsv: Bool = True
    flip: Annotated[Float, Probability] = 0.5
    # EMA of the weights (validation, checkpoints and the final model use it); null: off.
    # The decay ramps up as decay * (1 - exp(-updates / ema_tau)), so early averages follow the weights.
    ema_decay: Annotated[Float, Field(gt=0, lt=1)] | None = 0.9999
    ema_tau: Annotated[Float, Positive] = 2000.0
    # Validation/evaluation decoding: a low confidence floor (mAP integrates the whole PR curve).
    conf_threshold: Annotated[Float, Probability] = 0.001
    nms_iou: Annotated[Float, Probability] = 0.6
    max_det: Annotated[Int, Positive] = 100
    class_agnostic_nms: Bool = False
    # Score each box for every class above conf_threshold, not only its best (YOLOv5/v8 validation):
    # a box whose class is uncertain still counts for the right class, at its lower score.
    multi_label: Bool = True

    @model_validator(mode="after")
    def _sizes(self) -> DetectionConfig:
        if any(s <= 0 or s % 32 for s in self.multiscale or []):
            raise ValueError(f"detection.multiscale={self.multiscale}: sizes must be positive multiples of 32")
        if any(len(a) != 2 or min(a) <= 0 for a in self.anchors or []):
            raise ValueError(f"detection.anchors={self.anchors}: must be a list of positive [w, h] pairs")
        return self


Tracker = Literal["mlflow", "wandb", "comet"]


class TrackingConfig(Section):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db
    experiment: str = "visionflow-classification"
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    # Log into this existing MLflow run (e.g. created by Dagster's MlflowResource with its tags);
    # it is kept in RUN_DIR/mlflow_run_id, so a retry resumes into the same run.
    run_id: str | None = None
    log_checkpoint: Bool = True  # upload the best checkpoint as an artifact
    # Trackers that get the run's params and metrics: MLflow always (the record: registry, lineage), plus
    # W&B and Comet with their extras (tracking/loggers.py; offline without WANDB_API_KEY / COMET_API_KEY).
    loggers: list[Tracker] = Field(default_factory=lambda: list[Tracker](["mlflow"]))

    @field_validator("loggers")
    @classmethod
    def _mlflow_is_the_record(cls, value: list[str]) -> list[str]:
        if "mlflow" not in value:
            raise ValueError(
                "tracking.loggers must include mlflow (the registry and lineage live there): add others beside it"
            )
        return value


class JobConfig(Section):
    task: Literal["classification", "detection"] = "classification"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)

    def unused_sections(self) -> tuple[str, ...]:
        """Sections this task never reads (kept out of the params a run records: no detection.* on a classifier)."""
        return ("detection",) if self.task == "classification" else ("loss",)

    @model_validator(mode="after")
    def _across_sections(self) -> JobConfig:
        epochs = self.trainer.max_epochs
        if self.optim.warmup_epochs > epochs:
            raise ValueError(
                f"optim.warmup_epochs={self.optim.warmup_epochs} must be in [0, trainer.max_epochs={epochs}]"
            )
        if self.optim.freeze_body_epochs > epochs:
            raise ValueError(
                f"optim.freeze_body_epochs={self.optim.freeze_body_epochs} must be in [0, trainer.max_epochs={epochs}]"
            )
        if self.trainer.max_time and self.optim.schedule == "onecycle":
            raise ValueError(
                "trainer.max_time needs optim.schedule cosine, step or constant: onecycle fixes its length "
                "when it starts, so it cannot follow the steps a time budget allows"
            )
        size = self.data.image_size
        if self.task == "detection" and size is not None and size % 32:
            raise ValueError(f"data.image_size={size} must be a multiple of 32 for detection")
        return self


def read_yaml_mapping(path: Path, what: str, shape: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; ConfigError naming the file when it is missing or not one."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be {shape}")
    return loaded


def load_config(paths: str | Path | list[str | Path], overrides: list[str] | None = None) -> JobConfig:
    """Read YAML file(s) (later ones overlay earlier ones) and apply `a.b=value` overrides."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        loaded = read_yaml_mapping(path, "config file", "a mapping of sections")
        check_keys(loaded, JobConfig, str(path))
        _merge(data, loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.05")
        nested: Any = yaml.safe_load(raw) if raw != "" else None
        for part in reversed(key.split(".")):
            nested = {part: nested}
        check_keys(nested, JobConfig, "--set")
        _merge(data, nested)
    source = ", ".join(str(p) for p in paths) + (" + --set" if overrides else "")
    return from_dict(data, source=source)


def from_dict(data: dict[str, Any], source: str = "<dict>") -> JobConfig:
    """Build and validate a JobConfig from a nested dict; a bad value is a ConfigError naming `source` and the key."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(message(exc, data, source, JobConfig)) from None


def to_dict(cfg: JobConfig) -> dict[str, Any]:
    return cfg.model_dump()


def dump_yaml(cfg: JobConfig | dict[str, Any]) -> str:
    d = to_dict(cfg) if isinstance(cfg, JobConfig) else cfg
    return yaml.safe_dump(d, sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


# -- internals ---------------------------------------------------------------------------------


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict) and k != "tags" and k != "dropout":
            _merge(into[k], v)
        else:
            into[k] = v
