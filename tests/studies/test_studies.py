"""Measured studies: every study runs its real training jobs at tiny size, nested in one MLflow parent
run, and its verdict numbers come from those runs. One fixture runs all six once (the epochs study
through the subprocess launcher, the others in-process to skip ~15 s of interpreter start-up per job).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lightning_modules.errors import ConfigError
from lightning_modules.studies import STUDIES, StudyResults, get_study
from lightning_modules.studies.cli import main as studies_main
from lightning_modules.studies.epochs import early_stop_epoch
from lightning_modules.studies.report import studies_report
from lightning_modules.studies.runner import inprocess_launch, run_study
from lightning_modules.tracking.experiments import PARENT_TAG, JobRequest, subprocess_launch

pytestmark = pytest.mark.slow  # every study's training jobs

# Verdict numbers each study must produce (a subset; all of them computed from the runs).
REQUIRED = {
    "vanishing_gradient": [
        f"{v}.{k}"
        for v in ("sigmoid", "tanh", "relu", "relu_bn", "residual")
        for k in ("init_first_over_last", "trained_first_over_last")
    ],
    "degradation": [
        "plain-shallow.final_train_loss",
        "plain-deep.final_train_loss",
        "residual-shallow.final_train_loss",
        "residual-deep.final_train_loss",
        "plain.deep_over_shallow",
        "residual.deep_over_shallow",
        "plain.deeper_trains_worse",
        "residual_deep_over_plain_deep",
    ],
    "dropout": [
        f"p{p}.{k}" for p in ("0", "0.2", "0.5") for k in ("acc_gap", "best_val_acc1", "iterations_to_converge")
    ]
    + ["claim_less_overfitting", "claim_more_iterations"],
    "batch_lr": [
        "b4.seconds_per_epoch",
        "b8-fixed.final_val_acc1",
        "b8-scaled.final_val_acc1",
        "b8-scaled.lr_effective",
        "epoch_speedup_largest_vs_smallest",
        "tuner.batch_size",
        "tuner.lr",
    ],
    "epochs": ["optimum_epoch", "val_loss_optimum", "val_loss_last", "early_stop_kept_epoch"],
    "activations_losses": ["chance", "activation.bar", "loss.bar"]
    + [f"activation.{a}.best_val_acc1" for a in ("identity", "binary_step", "sigmoid", "tanh", "relu", "leaky_relu")]
    + [f"loss.{loss}.best_val_acc1" for loss in ("cross_entropy", "nll", "mse", "hinge", "soft_margin")],
}


@pytest.fixture(scope="module")
def studies(
    tiny_prepared_imagenet: Path, prepared_transfer: Path, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("studies")
    records = {}
    for name, study in STUDIES.items():
        data = prepared_transfer if study.dataset == "transfer" else tiny_prepared_imagenet
        launch = subprocess_launch if name == "epochs" else inprocess_launch
        # One thread per job: tiny convs gain nothing from two, and on a busy machine OpenMP threads
        # waiting for each other make a job many times slower.
        records[name] = run_study(
            name,
            data,
            root / name,
            launch=launch,
            tracking_uri=mlflow_uri,
            size="tiny",
            env={"VISIONFLOW_THREADS": "1"},
        )
    return root, records


@pytest.mark.parametrize("name", list(STUDIES))
def test_each_study_runs_its_jobs_and_writes_verdict_and_plot(studies, name):
    root, records = studies
    record = records[name]
    assert json.loads((root / name / "verdict.json").read_text())["numbers"] == record["numbers"]
    for key in REQUIRED[name]:
        assert record["numbers"].get(key) is not None, f"{name}: verdict number {key} missing"
    assert record["text"]
    assert (root / name / record["plot"]).read_bytes()[:4] == b"\x89PNG"
    study = get_study(name)
    expected = [v.name for v in study.variants(study.params_for("tiny"))]
    assert [v["name"] for v in record["variants"]] == expected
    for v in record["variants"]:
        result = json.loads((Path(v["run_dir"]) / "result.json").read_text())
        assert result["status"] == "finished" and result["mlflow_run_id"] == v["mlflow_run_id"]


def test_nested_runs_carry_the_parent_and_the_parent_the_verdict(studies, mlflow_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    _, records = studies
    for name, record in records.items():
        parent = client.get_run(record["parent_run_id"])
        assert parent.info.status == "FINISHED" and parent.data.tags["visionflow.study"] == name
        assert client.get_experiment(parent.info.experiment_id).name == "visionflow-studies"
        for key in REQUIRED[name]:
            assert parent.data.metrics[f"verdict/{key}"] == pytest.approx(float(record["numbers"][key]))
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
        assert {"study/verdict.json", f"study/{name}.png"} <= artifacts
        for v in record["variants"]:
            child = client.get_run(v["mlflow_run_id"])
            assert child.data.tags[PARENT_TAG] == parent.info.run_id
            assert child.data.tags["variant"] == v["name"]
            assert "train/loss" in child.data.metrics  # the job logged into the nested run


def test_vanishing_gradient_study_measures_the_activation_swap(studies):
    root, records = studies
    n = records["vanishing_gradient"]["numbers"]
    # sigmoid and relu differ only by model.activation; sigmoid's gradient vanishes by orders of magnitude.
    assert n["sigmoid.init_first_over_last"] < 1e-3 < n["relu.init_first_over_last"]
    assert n["sigmoid.init_first_over_last"] != n["relu.init_first_over_last"]
    configs = {v: (root / "vanishing_gradient" / v / "config.yaml").read_text() for v in ("sigmoid", "relu")}
    import yaml

    a, b = (yaml.safe_load(c) for c in configs.values())
    from lightning_modules.config import diff

    assert [k for k in diff(a, b) if not k.startswith("tracking.")] == ["model.activation"]
    assert n["sigmoid.layers"] == 18


def _results(root: Path, name: str) -> StudyResults:
    from lightning_modules.studies.base import VariantResult

    record = json.loads((root / name / "verdict.json").read_text())
    variants = [
        VariantResult(
            v["name"], v["tags"], Path(v["run_dir"]), json.loads((Path(v["run_dir"]) / "result.json").read_text())
        )
        for v in record["variants"]
    ]
    params = get_study(record["study"]).params.model_validate(record["params"])
    return StudyResults(variants, params, record.get("extra", {}))


def test_verdicts_are_computed_from_the_runs(studies):
    root, records = studies
    deg = get_study("degradation")
    res = _results(root, "degradation")
    recorded = dict(records["degradation"]["numbers"])
    assert recorded.pop("failed_runs") == 0 and records["degradation"]["complete"] is True
    assert deg.verdict(res)["numbers"] == recorded  # same runs, same verdict
    changed = copy.deepcopy(res)
    for row in changed.get("plain-deep").result["history"]:
        row["train_loss"] = row["train_loss"] * 3
    new = deg.verdict(changed)
    old = records["degradation"]["numbers"]
    assert new["numbers"]["plain-deep.final_train_loss"] == pytest.approx(3 * old["plain-deep.final_train_loss"])
    assert new["numbers"]["plain.deep_over_shallow"] == pytest.approx(3 * old["plain.deep_over_shallow"])
    assert new["numbers"]["plain.deeper_trains_worse"] == 1.0 and "plain34" in new["text"]
    # "Degrades" is decided on the share of the shallow net's progress the deep one makes.
    for deep_losses, degrades in (([2.3, 2.25], 1.0), ([2.3, 1.2], 0.0)):
        curves = copy.deepcopy(res)
        for name, losses in (("plain-shallow", [2.3, 1.0]), ("plain-deep", deep_losses)):
            curves.get(name).result["history"] = [{"epoch": i, "train_loss": x} for i, x in enumerate(losses)]
        numbers = deg.verdict(curves)["numbers"]
        assert numbers["plain.deep_progress_vs_shallow"] == pytest.approx((2.3 - deep_losses[1]) / 1.3)
        assert numbers["plain.degrades"] == degrades

    drop = get_study("dropout")
    res = _results(root, "dropout")
    hist = res.get("p0").result["history"]
    for row in hist:
        row["train_acc1"] = 1.0
    assert drop.verdict(res)["numbers"]["p0.acc_gap"] == pytest.approx(1.0 - hist[-1]["val_acc1"])


def test_early_stopping_replay_matches_lightning_semantics():
    # improvement must be strict; stop after `patience` epochs without one, keep the best epoch
    assert early_stop_epoch([3.0, 2.0, 1.0, 1.5, 1.0, 1.7], patience=3) == (6, 3)
    assert early_stop_epoch([3.0, 2.0, 1.0, 0.5], patience=1) == (None, 4)
    study = get_study("epochs")
    verdict = study.verdict(StudyResults([], study.params_for("default", {"patience": 2})))
    assert verdict["numbers"]["optimum_epoch"] is None  # no runs: no numbers, but the fields exist


def test_rerun_reuses_finished_variants_and_refuses_a_changed_config(studies, tiny_prepared_imagenet, mlflow_uri):
    root, records = studies

    def no_training(req: JobRequest) -> dict:
        raise AssertionError(f"{req.run_dir} was launched again")

    again = run_study(
        "degradation",
        tiny_prepared_imagenet,
        root / "degradation",
        launch=no_training,
        tracking_uri=mlflow_uri,
        size="tiny",
    )
    assert again["numbers"] == records["degradation"]["numbers"]
    assert again["parent_run_id"] == records["degradation"]["parent_run_id"]
    with pytest.raises(ConfigError, match="different config"):
        run_study(
            "degradation",
            tiny_prepared_imagenet,
            root / "degradation",
            launch=no_training,
            tracking_uri=mlflow_uri,
            size="tiny",
            overrides=["optim.lr=0.5"],
        )


def test_report_gathers_every_verdict_and_plot(studies, mlflow_uri, tmp_path):
    root, records = studies
    transfer = root.parent / "transfer_report" / "report.md"
    done = studies_report(root, transfer_report=transfer, tracking_uri=mlflow_uri)
    md = Path(done["path"]).read_text()
    assert done["studies"] == list(STUDIES)
    for name, record in records.items():
        assert record["text"] in md
        assert f"]({name}/{name}.png)" in md  # relative to the page
    assert "](../transfer_report/report.md)" in md
    from mlflow.tracking import MlflowClient

    arts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(done["mlflow_run_id"], "report")}
    assert "report/studies_report.md" in arts and "report/degradation" in arts
    assert studies_main(["report", str(root)]) == 0


def test_unknown_study_is_a_config_error_naming_the_studies(capsys):
    with pytest.raises(ConfigError) as err:
        get_study("vanishing")
    for name in STUDIES:
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="degradation"):
        run_study("nope", Path("."), Path("."))
    assert studies_main(["nope", "--data", ".", "--out", "."]) == 2
    assert "vanishing_gradient" in capsys.readouterr().err
    assert studies_main(["list"]) == 0


def test_deep_nets_have_18_weight_layers_and_swap_only_the_activation():
    from lightning_modules.models import MODEL_REGISTRY, build_model
    from lightning_modules.models.deep import weight_layers

    for name in ("deep_plain", "deep_plain_bn", "deep_residual"):
        assert name in MODEL_REGISTRY
        model = build_model(name, num_classes=5, width=0.125)
        assert weight_layers(model) == 18
    torch.manual_seed(0)
    sig = build_model("deep_plain", num_classes=5, width=0.125, activation="sigmoid")
    torch.manual_seed(0)
    relu = build_model("deep_plain", num_classes=5, width=0.125, activation="relu")
    assert sum(isinstance(m, nn.Sigmoid) for m in sig.modules()) == 17  # stem + 16 hidden convs
    assert not any(isinstance(m, nn.ReLU) for m in sig.modules())
    for (k, a), (_, b) in zip(sig.state_dict().items(), relu.state_dict().items()):
        assert torch.equal(a, b), k  # same weights: only the activation differs
    res = build_model("deep_residual", num_classes=5, width=0.125)
    plain_bn = build_model("deep_plain_bn", num_classes=5, width=0.125)
    shapes = lambda m: [tuple(p.shape) for p in m.parameters() if p.ndim > 1]  # noqa: E731
    assert shapes(res) == shapes(plain_bn)  # parameter-free shortcuts: the same weight layers


def test_report_takes_the_latest_verdict_of_each_study(tmp_path):
    import os

    from lightning_modules.studies.report import load_verdicts

    for i, folder in enumerate(("dropout/default", "dropout/default-1a2b3c4d", "epochs")):
        path = tmp_path / folder / "verdict.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"study": folder.split("/")[0], "text": folder}))
        os.utime(path, (1000 + i, 1000 + (5 - i if folder == "dropout/default" else i)))
    found = {v["study"]: v["text"] for v in load_verdicts(tmp_path)}
    assert found == {"dropout": "dropout/default", "epochs": "epochs"}  # the newest file, not the last listed


def test_seeds_repeat_every_variant_and_the_verdict_uses_the_mean(
    tiny_prepared_imagenet, prepared_transfer, mlflow_uri, tmp_path
):
    import statistics

    from lightning_modules.studies.seeds import merge

    out = tmp_path / "dropout"
    record = run_study(
        "dropout",
        prepared_transfer,
        out,
        launch=inprocess_launch,
        tracking_uri=mlflow_uri,
        size="tiny",
        params={"p": [0.0, 0.5], "seeds": [0, 1]},
        env={"VISIONFLOW_THREADS": "1"},
    )
    assert [v["name"] for v in record["variants"]] == ["p0-s0", "p0-s1", "p0.5-s0", "p0.5-s1"]
    runs = {n: json.loads((out / n / "result.json").read_text()) for n in ("p0-s0", "p0-s1")}
    assert yaml.safe_load((out / "p0-s1" / "config.yaml").read_text())["trainer"]["seed"] == 1
    finals = [r["history"][-1]["train_loss"] for r in runs.values()]
    assert finals[0] != finals[1]  # another seed is another run
    accs = [r["history"][-1]["val_acc1"] for r in runs.values()]
    assert record["numbers"]["p0.val_acc1_std_over_seeds"] == pytest.approx(statistics.stdev(accs))
    assert record["numbers"]["seeds"] == 2 and "seeds that finished (of 2)" in record["text"]
    assert record["numbers"]["failed_runs"] == 0 and not record["text"].startswith("INCOMPLETE")
    # The study's own numbers come from the per-epoch mean of the seeds' histories.
    res = _results(out.parent, "dropout")
    study = get_study("dropout")
    variants = study.variants(study.params_for("default", {"p": [0.0, 0.5]}))
    merged = {v.name: v for v in merge(variants, res.variants, [0, 1])}
    assert merged["p0"].curve("train_loss")[-1] == pytest.approx(statistics.fmean(finals))
    assert record["numbers"]["p0.final_train_acc1"] == pytest.approx(
        statistics.fmean(r["history"][-1]["train_acc1"] for r in runs.values())
    )


def test_seeds_parameter_is_checked():
    from lightning_modules.studies.seeds import expand, seeds_of

    study = get_study("dropout")
    assert seeds_of(study.params_for("default")) == [0, 1, 2] and seeds_of(study.params_for("tiny")) == []
    assert seeds_of(study.params_for("default", {"seeds": 3})) == [3]
    with pytest.raises(ConfigError, match="repeated"):
        seeds_of(study.params_for("default", {"seeds": [1, 1]}))
    with pytest.raises(ConfigError, match="study dropout: param seeds.0: Input should be a valid integer"):
        study.params_for("default", {"seeds": ["a"]})
    with pytest.raises(ConfigError, match="param p.0: Input should be less than 1"):
        study.params_for("default", {"p": [1.5]})
    v = study.variants(study.params_for("default", {"p": [0.5]}))
    assert expand(v, []) == v
    assert [(x.name, x.overrides[-1]) for x in expand(v, [7])] == [("p0.5-s7", "trainer.seed=7")]


def test_a_failed_seed_is_reported_never_dropped(tmp_path: Path) -> None:
    from lightning_modules.studies.base import Variant, VariantResult
    from lightning_modules.studies.seeds import expand, failures, merge

    history = [{"epoch": 1, "val_acc1": 0.5, "train_loss": 1.0}]
    base = [Variant("p0", (), {})]
    runs = expand(base, [0, 1, 2])
    results = [
        VariantResult(v.name, dict(v.tags), tmp_path, {"status": "finished", "history": history}) for v in runs[:2]
    ] + [VariantResult(runs[2].name, dict(runs[2].tags), tmp_path, {}, error="OOM killed")]
    merged = merge(base, results, [0, 1, 2])
    assert merged[0].result["seeds"] == ["0", "1"] and merged[0].result["failed_seeds"] == ["2"]
    n, text = failures(results)
    assert n == 1 and text.startswith("INCOMPLETE: 1 of 3 runs failed: p0-s2 (OOM killed)")
