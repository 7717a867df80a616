"""Transfer learning in the training job: pretrained body, frozen epochs, body LR, per-epoch history,
a handed-over MLflow run id, and evaluation of a checkpoint on the held-out test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_modules.errors import ConfigError, DataError

pytestmark = pytest.mark.slow  # pretraining and transfer jobs

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke-classify.yaml"
TRANSFER = REPO / "configs" / "transfer-cpu.yaml"
MODEL = ["model.width=0.25", "model.small_input=true"]  # tiny and the same for both stages
QUICK = ["data.num_workers=0", "data.batch_size=8", "data.image_size=32", "trainer.grad_monitor_every_n_steps=0"]


def _train(config: Path, data: Path, out: Path, *sets: str) -> int:
    from lightning_modules.train import main

    argv = [str(config), "--data", str(data), "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


@pytest.fixture(scope="module")
def pretrained(tiny_prepared_imagenet: Path, tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Path:
    """best.ckpt of a one-epoch pretraining on the tiny 4-class set."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert (
        _train(
            SMOKE,
            tiny_prepared_imagenet,
            out,
            *QUICK,
            *MODEL,
            "trainer.max_epochs=1",
            f"tracking.tracking_uri={mlflow_uri}",
            "tracking.experiment=test-pretrain",
        )
        == 0
    )
    return Path(json.loads((out / "result.json").read_text())["best_checkpoint"])


def _body(state: dict) -> dict:
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.body.")}


def test_frozen_body_keeps_pretrained_weights_in_a_handed_over_mlflow_run(
    pretrained: Path, prepared_transfer: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    """One epoch, body frozen: the body (BN statistics included) is the pretrained one, the new head learned.
    The job logs into the MLflow run it was handed (tracking.run_id) and records the epoch's history."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("test-handed-over")
    handed = client.create_run(exp, tags={"dagster_run_id": "abc"}).info.run_id
    out = tmp_path / "ft"
    assert (
        _train(
            TRANSFER,
            prepared_transfer,
            out,
            *QUICK,
            *MODEL,
            "trainer.max_epochs=1",
            "optim.freeze_body_epochs=1",
            f"model.pretrained_checkpoint={pretrained}",
            f"tracking.tracking_uri={mlflow_uri}",
            f"tracking.run_id={handed}",
        )
        == 0
    )
    result = json.loads((out / "result.json").read_text())
    assert result["mlflow_run_id"] == handed == (out / "mlflow_run_id").read_text().strip()
    assert result["experiment"] == "test-handed-over" and result["init"] == "pretrained"
    run = client.get_run(handed)
    assert run.info.status == "FINISHED" and run.data.tags["dagster_run_id"] == "abc"
    assert run.data.params["optim.freeze_body_epochs"] == "1" and "val/acc1" in run.data.metrics
    assert len(client.search_runs([exp])) == 1

    before = torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"]
    after = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    body_before, body_after = _body(before), _body(after)
    assert body_before.keys() == body_after.keys() and len(body_after) > 10
    changed = [k for k in body_after if not torch.equal(body_before[k], body_after[k])]
    assert changed == [], f"frozen body changed: {changed[:5]}"
    assert after["model.head.fc.weight"].shape[0] == 2 != before["model.head.fc.weight"].shape[0]

    (row,) = result["history"]
    assert row["epoch"] == 1 and set(row) >= {"train_loss", "val_loss", "val_acc1", "val_acc5", "lr", "lr_body"}
    assert all(isinstance(row[k], float) for k in ("train_loss", "val_loss", "val_acc1", "val_acc5", "lr"))
    assert row["lr_body"] == pytest.approx(0.1 * row["lr"])
    assert json.loads((out / "history.json").read_text()) == result["history"]


def test_unfrozen_body_trains_at_the_body_lr(pretrained: Path) -> None:
    from lightning_modules.classification.module import ClassificationModule, param_groups

    module = ClassificationModule(
        model={"name": "resnet18", "width": 0.25, "small_input": True, "pretrained_checkpoint": str(pretrained)},
        optim={"name": "sgd", "lr": 0.1, "body_lr_mult": 0.1, "freeze_body_epochs": 1},
        loss={"name": "cross_entropy"},
        num_classes=3,
    )
    groups = param_groups(module.model, 5e-4, lr=0.1, body_lr_mult=0.1)
    body_ids = {id(p) for p in module.model.body.parameters()}
    for g in groups:
        in_body = {id(p) in body_ids for p in g["params"]}
        assert in_body == {bool(g.get("body"))} and g["lr"] == pytest.approx(0.01 if g.get("body") else 0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(module.model.parameters()))
    # Loaded: every body tensor equals the checkpoint's; the 3-class head is new.
    saved = _body(torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"])
    own = module.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())
    assert module.model.head.fc.out_features == 3


def test_checkpoint_of_another_architecture_is_a_config_error(
    pretrained: Path, prepared_transfer: Path, tmp_path: Path, capsys
) -> None:
    rc = _train(
        TRANSFER,
        prepared_transfer,
        tmp_path / "bad",
        *QUICK,
        "model.width=0.5",
        "model.small_input=true",
        f"model.pretrained_checkpoint={pretrained}",
        "trainer.fast_dev_run=true",
    )
    err = capsys.readouterr().err
    assert rc == 2 and "width" in err and str(pretrained) in err
    from lightning_modules.classification.module import load_pretrained
    from lightning_modules.models import build_model

    with pytest.raises(ConfigError, match="does not fit"):  # a plain state dict: checked by keys and shapes
        load_pretrained(build_model("vgg16", num_classes=2, width=0.125), pretrained)


def test_freeze_longer_than_training_is_a_config_error() -> None:
    from lightning_modules.config import load_config

    with pytest.raises(ConfigError, match="freeze_body_epochs"):
        load_config(TRANSFER, ["optim.freeze_body_epochs=99"])
    with pytest.raises(ConfigError, match="not both"):
        load_config(TRANSFER, ["model.pretrained_checkpoint=a.ckpt", "model.torchvision_weights=b.pth"])


def test_torchvision_weights_initialise_the_body(prepared_transfer: Path, tmp_path: Path) -> None:
    from lightning_modules.classification.module import ClassificationModule
    from lightning_modules.models import build_model

    reference = build_model("resnet18", num_classes=1000, width=1.0)
    tv = {}  # our keys back to torchvision's, as a user's saved torchvision state dict would have them
    for key, value in reference.state_dict().items():
        for tv_prefix, our_prefix in reference.torchvision_keys:
            if key.startswith(our_prefix):
                tv[tv_prefix + key[len(our_prefix) :]] = value
                break
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(tv, path)
    module = ClassificationModule(
        model={"name": "resnet18", "torchvision_weights": str(path)},
        optim={"name": "sgd", "lr": 0.1},
        loss={"name": "cross_entropy"},
        num_classes=2,
    )
    ours = module.model.state_dict()
    body = [k for k in ours if k.startswith("body.")]
    assert body and all(torch.equal(ours[k], reference.state_dict()[k]) for k in body)
    assert module.model.head.fc.out_features == 2


# -- evaluation on the held-out test split -----------------------------------------------------------


def test_evaluate_checkpoint_on_the_test_split(
    pretrained: Path, prepared_transfer: Path, tiny_prepared_imagenet: Path, tmp_path: Path, capsys
) -> None:
    from lightning_modules.classification.evaluate import evaluate, evaluate_module, load_classifier
    from lightning_modules.cli import main as cli

    ft = tmp_path / "ft"
    assert (
        _train(
            TRANSFER,
            prepared_transfer,
            ft,
            *QUICK,
            *MODEL,
            "trainer.max_epochs=1",
            "trainer.fast_dev_run=false",
            f"model.pretrained_checkpoint={pretrained}",
            "optim.freeze_body_epochs=0",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        )
        == 0
    )
    ckpt = Path(json.loads((ft / "result.json").read_text())["best_checkpoint"])
    manifest = json.loads((prepared_transfer / "manifest.json").read_text())
    n_test = manifest["totals"]["test"]
    assert n_test == 20  # tiny_raw_data: 10 test images per transfer class, 2 classes

    res = evaluate(ckpt, prepared_transfer, split="test", out_dir=tmp_path / "eval", batch_size=7)
    assert res["n"] == n_test and 0.0 <= res["top1"] <= res["top5"] <= 1.0 and res["top5"] == 1.0  # 2 classes
    assert set(res["per_class"]) == {c["name"] for c in manifest["classes"]}
    assert res["nan"] is False and res["mean_loss"] > 0
    assert sum(map(sum, res["confusion_matrix"])) == n_test
    assert all(Path(p).is_file() for p in res["figures"]) and len(res["figures"]) == 2
    again = evaluate(ckpt, prepared_transfer, split="test", out_dir=tmp_path / "eval2", batch_size=64)
    assert {k: again[k] for k in ("top1", "top5", "per_class", "confusion_matrix")} == {
        k: res[k] for k in ("top1", "top5", "per_class", "confusion_matrix")
    }
    assert again["mean_loss"] == pytest.approx(res["mean_loss"], rel=1e-5)

    # A model loaded another way (a bare backbone): normalised with the given statistics, same numbers.
    clf = load_classifier(ckpt)
    bare = evaluate_module(
        clf.backbone,
        prepared_transfer,
        out_dir=tmp_path / "bare",
        mean=(clf.mean / 255).flatten().tolist(),
        std=(clf.std / 255).flatten().tolist(),
    )
    assert bare["confusion_matrix"] == res["confusion_matrix"]

    capsys.readouterr()
    assert (
        cli(
            [
                "evaluate",
                str(ckpt),
                "--data",
                str(prepared_transfer),
                "--split",
                "test",
                "--out",
                str(tmp_path / "cli"),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["top1"] == res["top1"]
    assert json.loads((tmp_path / "cli" / "evaluation.json").read_text())["n"] == n_test

    with pytest.raises(ConfigError, match="classes"):  # a 4-class model on the 2-class set
        evaluate(pretrained, prepared_transfer, out_dir=tmp_path / "wrong")
    with pytest.raises(DataError, match="test"):  # this prepared set has no test split
        evaluate(pretrained, tiny_prepared_imagenet, split="test", out_dir=tmp_path / "none")


def test_evaluate_flags_non_finite_logits(prepared_transfer: Path, tmp_path: Path) -> None:
    from torch import nn

    from lightning_modules.classification.evaluate import evaluate_module

    class Broken(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 2)
            out[0, 0] = float("nan")
            return out

    res = evaluate_module(Broken(), prepared_transfer, split="val", out_dir=tmp_path)
    assert res["nan"] is True and res["split"] == "val"
