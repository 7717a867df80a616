"""The job config (lightning_modules/config.py): every bad value is a ConfigError naming the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_modules.config import DropoutConfig, JobConfig, dump_yaml, from_dict, load_config, to_dict
from lightning_modules.errors import ConfigError


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text("optim:\n  lr: 0.01\n  warmup_epochs: 1\ntrainer:\n  max_epochs: 4\n")
    return path


def test_unknown_key_names_the_file_it_is_in_and_the_known_keys(base: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config([base, overlay])
    message = str(info.value)
    assert message.startswith(f"{overlay}: unknown key 'trainer.epochs'") and str(base) not in message
    assert "known in this section: max_epochs, max_time, devices" in message
    with pytest.raises(ConfigError, match=r"^<dict>: unknown key 'model\.nme' \(known in this section: name,"):
        from_dict({"model": {"nme": "vgg16"}})


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("optim.lr=nan", "optim.lr=nan must be a finite number"),
        ("optim.lr=.inf", "optim.lr=inf must be a finite number"),
        ("detection.ema_tau=-.inf", "detection.ema_tau=-inf must be a finite number"),
        ("detection.anchors=[[10, .nan]]", "detection.anchors[0][1]=nan must be a finite number"),
    ],
)
def test_nan_and_inf_are_refused_by_name(base: Path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(base, [setting])
    assert str(info.value) == f"{base} + --set: {message}"


def test_a_bad_choice_names_the_choices(base: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.schedule='linear' is not one of 'onecycle', 'cosine', 'step'"):
        load_config(base, ["optim.schedule=linear"])
    with pytest.raises(ConfigError, match=r"trainer\.precision=8 is not one of '32', 'bf16-mixed' or '16-mixed'"):
        load_config(base, ["trainer.precision=8"])


def test_lenient_numbers(base: Path) -> None:
    cfg = load_config(base, ["trainer.precision=32", "optim.lr=1e-3", "optim.momentum=1", "model.name=18"])
    assert cfg.trainer.precision == "32" and cfg.optim.lr == 1e-3 and cfg.model.name == "18"
    assert type(cfg.optim.momentum) is float
    # limit_*_batches keeps its type: 4 batches, or a fraction
    assert load_config(base, ["trainer.limit_train_batches=4"]).trainer.limit_train_batches == 4
    assert type(load_config(base, ["trainer.limit_train_batches=4"]).trainer.limit_train_batches) is int
    assert type(load_config(base, ["trainer.limit_train_batches=1.0"]).trainer.limit_train_batches) is float


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("data.batch_size=true", "data.batch_size=True must be an integer"),
        ("data.batch_size=4.0", "data.batch_size=4.0 must be an integer"),
        ("data.batch_size=many", "data.batch_size='many' must be an integer"),
        ("optim.lr=true", "optim.lr=True must be a number"),
        ("data.augment=1", "data.augment=1 must be true or false"),
        ("trainer.limit_train_batches=true", "trainer.limit_train_batches=True must be a number or an integer"),
        ("optim.lr=0", "optim.lr=0 must be > 0"),
        ("loss.label_smoothing=1", "loss.label_smoothing=1 must be < 1"),
    ],
)
def test_wrong_types_and_bounds_name_the_key(base: Path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(base, [setting])
    assert str(info.value) == f"{base} + --set: {message}"


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        (["optim.warmup_epochs=5"], r"optim\.warmup_epochs=5\.0 must be in \[0, trainer\.max_epochs=4\]"),
        (["optim.freeze_body_epochs=9"], r"optim\.freeze_body_epochs=9 must be in \[0, trainer\.max_epochs=4\]"),
        (["task=detection", "data.image_size=70"], r"data\.image_size=70 must be a multiple of 32 for detection"),
        (["detection.multiscale=[320, 330]"], r"detection\.multiscale=\[320, 330\]: sizes must be positive multiples"),
        (["detection.anchors=[[10, 13], [5]]"], r"detection\.anchors=.*: must be a list of positive \[w, h\] pairs"),
        (
            ["model.pretrained_checkpoint=a.ckpt", "model.torchvision_weights=b.pth"],
            r"set model\.pretrained_checkpoint or model\.torchvision_weights, not both",
        ),
    ],
)
def test_cross_field_rules_name_the_keys(base: Path, settings: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(base))} \+ --set: {pattern}"):
        load_config(base, settings)


def test_image_size_needs_no_multiple_of_32_for_classification(base: Path) -> None:
    assert load_config(base, ["data.image_size=70"]).data.image_size == 70


def test_overlays_then_overrides_in_order(base: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "tuned.yaml"
    overlay.write_text("optim:\n  lr: 0.05\n  name: adamw\nmodel:\n  dropout: {input: 0.1, classifier: 0.2}\n")
    cfg = load_config([base, overlay], ["optim.lr=0.2", "model.dropout={blocks: 0.3}"])
    assert cfg.optim.lr == 0.2 and cfg.optim.name == "adamw" and cfg.optim.warmup_epochs == 1.0
    assert cfg.trainer.max_epochs == 4 and cfg.model.dropout == DropoutConfig(blocks=0.3)  # replaced whole
    assert load_config([base, overlay]).optim.lr == 0.05


def test_round_trip_through_yaml(base: Path, tmp_path: Path) -> None:
    cfg = load_config(base, ["tracking.tags={team: vision}", "detection.anchors=[[10, 13], [16, 30]]"])
    d = to_dict(cfg)
    assert d["optim"]["lr"] == 0.01 and d["tracking"]["tags"] == {"team": "vision"}
    assert d == JobConfig().model_dump() | {k: d[k] for k in ("optim", "trainer", "tracking", "detection")}
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(cfg))
    assert load_config(saved) == cfg


def test_assignment_is_validated() -> None:
    cfg = JobConfig()
    with pytest.raises(ValueError, match="max_epochs"):
        cfg.trainer.max_epochs = 0


def test_trackers_beside_mlflow_never_replace_it(base: Path) -> None:
    assert load_config(base, ["tracking.loggers=[mlflow, wandb]"]).tracking.loggers == ["mlflow", "wandb"]
    with pytest.raises(ConfigError, match="tracking.loggers.*must include mlflow"):
        load_config(base, ["tracking.loggers=[wandb]"])
    with pytest.raises(ConfigError, match="tracking.loggers"):
        load_config(base, ["tracking.loggers=[mlflow, tensorboard]"])
