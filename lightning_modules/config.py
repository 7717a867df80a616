"""Training job configuration: dataclasses loaded from YAML, with `--set a.b=value` overrides.

A job config is one YAML file (optionally followed by overlay files such as a run's
`tuned.yaml`) with the sections below; every key is checked, so a typo is a
`ConfigError` naming the file and the key instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


@dataclass
class ModelConfig:
    name: str = "resnet18"
    width: float = 1.0
    activation: str = "default"  # "default": the architecture's own; else a name in ACTIVATIONS
    # Keyword arguments of models.DropoutConfig (None: the backbone's default).
    dropout: dict[str, Any] | None = None
    small_input: bool = False
    # Transfer: our Lightning checkpoint (or a state_dict) whose body initialises the model; the
    # classifier starts fresh for this job's classes. The architecture must match (ConfigError).
    pretrained_checkpoint: str | None = None
    # Transfer from torchvision: a saved torchvision ImageNet state dict (models.backbone.load_torchvision_weights).
    torchvision_weights: str | None = None


@dataclass
class DataConfig:
    batch_size: int = 64  # per device
    num_workers: int = 2
    image_size: int | None = None  # None: the prepared manifest's image_size
    augment: bool = True  # random resized crop + horizontal flip on the train split
    crop_scale_min: float = 0.35
    shuffle: bool = True


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    # When set, lr is given for this batch and scaled linearly to the effective batch.
    reference_batch: int | None = None
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 30  # epochs, for schedule "step"
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    # Fine-tuning: the body (feature extractor) is frozen for this many epochs (no gradients, batch
    # norm statistics fixed), so the fresh classifier settles before it can disturb the body.
    freeze_body_epochs: int = 0
    body_lr_mult: float = 1.0  # the body's LR = lr x this (e.g. 0.1: fine-tune the body gently)


@dataclass
class LossConfig:
    name: str = "cross_entropy"
    label_smoothing: float = 0.0


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "cpu"
    precision: str = "32"
    channels_last: bool = False
    compile: bool = False
    accumulate_grad_batches: int = 1
    seed: int = 0
    early_stopping_patience: int | None = None  # epochs without val/loss improvement; None: off
    checkpoint_every_n_steps: int = 200
    limit_train_batches: float | int | None = None
    limit_val_batches: float | int | None = None
    fast_dev_run: bool = False
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 50
    grad_monitor_every_n_steps: int = 50  # 0: gradient flow monitor off
    nan_guard: bool = True
    deterministic: bool = False


@dataclass
class DetectionConfig:
    """The YOLO stage (task: detection). Input size is data.image_size (default 416)."""

    version: str = "yolov3"  # a name in detection.models.DETECTORS
    # (w, h) pixels at data.image_size; None: the prepared set's k-means anchors (v2: 5, v3: 9), rescaled.
    anchors: list[list[float]] | None = None
    box_loss: str = "ciou"  # v3: giou, ciou or mse
    grid: int = 7  # v1: S
    boxes: int = 2  # v1: B
    # Multi-scale training (YOLOv2): every `multiscale_every` batches the batch is resized to one of
    # these sizes (multiples of 32); the same choice on every rank. None: fixed size.
    multiscale: list[int] | None = None
    multiscale_every: int = 10
    mosaic_prob: float = 0.5
    affine: bool = True
    hsv: bool = True
    flip: float = 0.5
    # EMA of the weights (validation, checkpoints and the final model use it); null: off.
    # The decay ramps up as decay * (1 - exp(-updates / ema_tau)), so early averages follow the weights.
    ema_decay: float | None = 0.9999
    ema_tau: float = 2000.0
    # Validation/evaluation decoding: a low confidence floor (mAP integrates the whole PR curve).
    conf_threshold: float = 0.001
    nms_iou: float = 0.6
    max_det: int = 100
    class_agnostic_nms: bool = False


@dataclass
class TrackingConfig:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db
    experiment: str = "visionflow-classification"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Log into this existing MLflow run (e.g. created by Dagster's MlflowResource with its tags);
    # it is kept in RUN_DIR/mlflow_run_id, so a retry resumes into the same run.
    run_id: str | None = None
    log_checkpoint: bool = True  # upload the best checkpoint as an artifact


TASKS = ("classification", "detection")


@dataclass
class JobConfig:
    task: str = "classification"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)


_CHOICES = {
    ("optim", "name"): OPTIMIZERS,
    ("optim", "schedule"): SCHEDULES,
    ("trainer", "precision"): PRECISIONS,
    ("trainer", "accelerator"): ACCELERATORS,
    ("detection", "box_loss"): ("giou", "ciou", "mse"),
}


def load_config(paths: str | Path | list[str | Path], overrides: list[str] | None = None) -> JobConfig:
    """Read YAML file(s) (later ones overlay earlier ones) and apply `a.b=value` overrides."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        _check_keys(loaded, JobConfig, str(path), "")
        _merge(data, loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.05")
        value = yaml.safe_load(raw) if raw != "" else None
        nested: dict[str, Any] = value  # type: ignore[assignment]
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _check_keys(nested, JobConfig, "--set", "")
        _merge(data, nested)
    source = ", ".join(str(p) for p in paths) + (" + --set" if overrides else "")
    return from_dict(data, source=source)


def from_dict(data: dict[str, Any], source: str = "<dict>") -> JobConfig:
    """Build and validate a JobConfig from a nested dict."""
    _check_keys(data, JobConfig, source, "")
    cfg = _build(JobConfig, data, source, "")
    validate(cfg, source)
    return cfg


def to_dict(cfg: JobConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


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


def validate(cfg: JobConfig, source: str) -> None:
    _check_finite(to_dict(cfg), source)
    if cfg.task not in TASKS:
        raise ConfigError(f"{source}: task={cfg.task!r} is not one of {', '.join(TASKS)}")
    for (section, name), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{source}: {section}.{name}={value!r} is not one of {', '.join(choices)}")
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "optim.lr": cfg.optim.lr,
        "trainer.max_epochs": cfg.trainer.max_epochs,
        "trainer.devices": cfg.trainer.devices,
        "trainer.num_nodes": cfg.trainer.num_nodes,
        "trainer.accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
        "trainer.checkpoint_every_n_steps": cfg.trainer.checkpoint_every_n_steps,
        "model.width": cfg.model.width,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{source}: {key}={value!r} must be > 0")
    if cfg.optim.reference_batch is not None and cfg.optim.reference_batch <= 0:
        raise ConfigError(f"{source}: optim.reference_batch must be > 0 or null")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"{source}: data.num_workers must be >= 0")
    if not 0.0 <= cfg.loss.label_smoothing < 1.0:
        raise ConfigError(f"{source}: loss.label_smoothing={cfg.loss.label_smoothing} must be in [0, 1)")
    if not 0.0 < cfg.data.crop_scale_min <= 1.0:
        raise ConfigError(f"{source}: data.crop_scale_min must be in (0, 1]")
    if cfg.optim.warmup_epochs < 0 or cfg.optim.warmup_epochs > cfg.trainer.max_epochs:
        raise ConfigError(f"{source}: optim.warmup_epochs must be in [0, trainer.max_epochs]")
    if not 0 <= cfg.optim.freeze_body_epochs <= cfg.trainer.max_epochs:
        raise ConfigError(
            f"{source}: optim.freeze_body_epochs={cfg.optim.freeze_body_epochs} must be in "
            f"[0, trainer.max_epochs={cfg.trainer.max_epochs}]"
        )
    if cfg.optim.body_lr_mult < 0:
        raise ConfigError(f"{source}: optim.body_lr_mult={cfg.optim.body_lr_mult} must be >= 0")
    if cfg.task == "detection":
        _validate_detection(cfg, source)
    if cfg.model.pretrained_checkpoint and cfg.model.torchvision_weights:
        raise ConfigError(f"{source}: set model.pretrained_checkpoint or model.torchvision_weights, not both")


def _validate_detection(cfg: JobConfig, source: str) -> None:
    d = cfg.detection
    size = cfg.data.image_size
    if size is not None and size % 32:
        raise ConfigError(f"{source}: data.image_size={size} must be a multiple of 32 for detection")
    for s in d.multiscale or []:
        if not isinstance(s, int) or s <= 0 or s % 32:
            raise ConfigError(f"{source}: detection.multiscale={d.multiscale}: sizes must be positive multiples of 32")
    if d.anchors is not None and (
        not all(isinstance(a, list) and len(a) == 2 for a in d.anchors) or any(v <= 0 for a in d.anchors for v in a)
    ):
        raise ConfigError(f"{source}: detection.anchors must be a list of positive [w, h] pairs")
    if d.ema_decay is not None and not 0.0 < d.ema_decay < 1.0:
        raise ConfigError(f"{source}: detection.ema_decay={d.ema_decay} must be in (0, 1) or null")
    checks = {
        "detection.multiscale_every": d.multiscale_every,
        "detection.grid": d.grid,
        "detection.boxes": d.boxes,
        "detection.max_det": d.max_det,
        "detection.ema_tau": d.ema_tau,
    }
    for key, value in checks.items():
        if value <= 0:
            raise ConfigError(f"{source}: {key}={value!r} must be > 0")
    for key, value in {
        "detection.mosaic_prob": d.mosaic_prob,
        "detection.flip": d.flip,
        "detection.conf_threshold": d.conf_threshold,
        "detection.nms_iou": d.nms_iou,
    }.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{source}: {key}={value!r} must be in [0, 1]")


def _check_finite(d: Any, source: str, key: str = "") -> None:
    """NaN and inf pass every `<= 0` test and then crash deep in torch: refuse them by name, up front."""
    if isinstance(d, dict):
        for k, v in d.items():
            _check_finite(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(d, (list, tuple)):
        for i, v in enumerate(d):
            _check_finite(v, source, f"{key}[{i}]")
    elif isinstance(d, float) and not math.isfinite(d):
        raise ConfigError(f"{source}: {key}={d!r} must be a finite number")


# -- internals ---------------------------------------------------------------------------------


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict) and k != "tags" and k != "dropout":
            _merge(into[k], v)
        else:
            into[k] = v


def _check_keys(data: dict[str, Any], cls: type, source: str, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known in this section: {known})")
        sub = hints[key]
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{prefix}{key}' must be a mapping of {sub.__name__} fields")
            _check_keys(value, sub, source, f"{prefix}{key}.")


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, source, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, source, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Check `value` against a simple type hint; ints are accepted for floats, numbers as strings."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        if type(value) in options:  # exact match first: 4 stays a batch count, not 4.0
            return value
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, source, key)
            except ConfigError as exc:
                errors.append(exc)
        raise (
            errors[0]
            if len(errors) == 1
            else ConfigError(f"{source}: {key}={value!r} has the wrong type (expected {_name(hint)})")
        )
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    bad = ConfigError(f"{source}: {key}={value!r} has the wrong type (expected {_name(hint)})")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # precision: 32
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
