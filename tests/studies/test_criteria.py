"""Declared rules judged on 95% intervals over seeds (studies/criteria.py), and the runner that applies them:
the rules sit in each study's config before any run, are recorded in MLflow, and a comparison of a network
with itself comes out "not distinguishable"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from lightning_modules.errors import ConfigError
from lightning_modules.studies import STUDIES, get_study
from lightning_modules.studies.criteria import CONFIRMED, REFUTED, UNCLEAR, Figure, Rule, evaluate, judge, overall
from lightning_modules.studies.runner import inprocess_launch, run_study

RULE = Rule(claim="the deeper plain net trains worse", figure="ratio", op=">", threshold=1.0)


def test_the_interval_is_students_t_over_seeds() -> None:
    f = Figure([1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: half-width t(0.975, 2) * 1 / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    assert f.mean == 2.0 and f.ci95 == pytest.approx((2.0 - 2.4841, 2.0 + 2.4841), abs=1e-4)
    assert Figure([1.0]).ci95 is None and Figure([None, 1.0]).ci95 is None and Figure([]).mean is None


@pytest.mark.parametrize(
    "values, verdict",
    [
        ([1.30, 1.32, 1.31], CONFIRMED),  # the whole interval above the null
        ([0.70, 0.72, 0.71], REFUTED),  # the whole interval on the other side
        ([0.9, 1.3, 1.1], UNCLEAR),  # the interval straddles 1
        ([1.0, 1.0, 1.0], UNCLEAR),  # no difference at all: never "confirmed"
        ([1.5], UNCLEAR),  # one seed: no interval, no verdict
        ([1.5, None, 1.51, 1.52], CONFIRMED),  # a seed without the number is left out (said elsewhere)
        ([1.5, None, 1.6], UNCLEAR),  # two seeds: t(0.975, 1) = 12.7 makes the interval wide
    ],
)
def test_a_rule_is_confirmed_only_when_its_interval_excludes_the_null(values, verdict) -> None:
    assert judge(RULE, Figure(values)) == verdict


def test_a_study_is_confirmed_only_when_every_rule_is() -> None:
    assert overall([CONFIRMED, CONFIRMED]) == CONFIRMED
    assert overall([CONFIRMED, UNCLEAR]) == UNCLEAR
    assert overall([CONFIRMED, REFUTED, UNCLEAR]) == REFUTED
    assert overall([]) == UNCLEAR
    judged = evaluate([RULE], [{"ratio": 1.3}, {"ratio": 1.31}, {"ratio": 1.32}])
    assert judged["verdict"] == CONFIRMED and judged["figures"]["ratio"]["values"] == [1.3, 1.31, 1.32]
    low, high = judged["figures"]["ratio"]["ci95"]
    assert low > 1.0 and math.isclose(judged["figures"]["ratio"]["mean"], 1.31)


def test_every_study_declares_its_rules_and_three_seeds_by_default() -> None:
    for name, study in STUDIES.items():
        params = study.params()
        assert params.seeds == [0, 1, 2], name
        assert params.rules, f"{name} declares no rule"
        for rule in params.rules:
            assert rule.claim and rule.figure and math.isfinite(rule.threshold), (name, rule)


def test_a_rule_is_a_typed_config_field() -> None:
    study = get_study("degradation")
    rule = {"claim": "x", "figure": "plain.deep_over_shallow", "op": ">", "threshold": 1.1}
    params = study.params_for("default", {"rules": [rule]})
    assert params.rules == [Rule(claim="x", figure="plain.deep_over_shallow", op=">", threshold=1.1)]
    with pytest.raises(ConfigError, match="rules"):
        study.params_for("default", {"rules": [{"claim": "x", "figure": "f", "op": "~", "threshold": 1}]})


@pytest.mark.slow
def test_the_same_network_twice_is_not_distinguishable_and_the_rules_are_recorded(
    tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    """The degradation study for real at tiny size over 3 seeds: with the deep plain role trained as plain-18
    the plain comparison has no effect to find, and its verdict flips to "not distinguishable"."""
    from mlflow.tracking import MlflowClient

    same = {
        "plain-shallow": "plain18",
        "plain-deep": "plain18",
        "residual-shallow": "resnet18",
        "residual-deep": "resnet34",
    }
    records = {}
    for label, nets in (("real", None), ("same", same)):
        records[label] = run_study(
            "degradation",
            tiny_prepared_imagenet,
            tmp_path / label,
            launch=inprocess_launch,
            tracking_uri=mlflow_uri,
            size="tiny",
            params={"seeds": [0, 1, 2], **({"nets": nets} if nets else {})},
        )
    real, twin = records["real"], records["same"]
    plain = {r["figure"]: r for r in twin["rules"]}["plain.deep_over_shallow"]
    assert plain["verdict"] == UNCLEAR and twin["verdict"] != CONFIRMED
    assert twin["figures"]["plain.deep_over_shallow"]["values"] == [1.0, 1.0, 1.0]  # identical runs per seed
    # the real pair differs: a 34-layer net is not the 18-layer one
    assert all(v != 1.0 for v in real["figures"]["plain.deep_over_shallow"]["values"])
    # verdict.json carries the declared rule, the seeds, each figure's mean and interval, and the verdict
    on_disk = json.loads((tmp_path / "same" / "verdict.json").read_text())
    assert on_disk["seeds"] == [0, 1, 2] and on_disk["verdict"] in (CONFIRMED, REFUTED, UNCLEAR)
    assert on_disk["rule"][0] == {
        "claim": "the deeper plain net trains worse",
        "figure": "plain.deep_over_shallow",
        "op": ">",
        "threshold": 1.0,
    }
    assert set(on_disk["figures"]["residual.deep_over_shallow"]) >= {"mean", "ci95", "values"}
    params = MlflowClient(mlflow_uri).get_run(twin["parent_run_id"]).data.params
    assert params["rule.0.figure"] == "plain.deep_over_shallow" and params["rule.0.threshold"] == "1.0"
    # a criterion cannot change after its results: the same folder refuses another rule before training
    with pytest.raises(ConfigError, match="other rules"):
        run_study(
            "degradation",
            tiny_prepared_imagenet,
            tmp_path / "same",
            launch=inprocess_launch,
            tracking_uri=mlflow_uri,
            size="tiny",
            params={
                "seeds": [0, 1, 2],
                "nets": same,
                "rules": [{"claim": "x", "figure": "plain.deep_over_shallow", "op": ">", "threshold": 0.5}],
            },
        )


def test_the_paper_size_is_the_sources_scale() -> None:
    """Degradation at paper size trains He et al.'s CIFAR nets (20/56 layers) with their recipe and the GPU
    defaults; the vanishing-gradient nets have 34 layers."""
    deg = get_study("degradation")
    params = deg.params_for("paper")
    assert set(params.nets.values()) == {"plain20", "plain56", "resnet20", "resnet56"}
    overrides = deg.size_overrides("paper")
    for item in ("trainer.precision=bf16-mixed", "trainer.channels_last=true", "optim.lr=0.1", "data.batch_size=128"):
        assert item in overrides
    vanishing = get_study("vanishing_gradient")
    nets = {v.tags["model"] for v in vanishing.variants(vanishing.params_for("paper"))}
    assert nets == {"deep_plain34", "deep_plain_bn34", "deep_residual34"}
    assert all("paper" in s.sizes for s in STUDIES.values())


@pytest.mark.slow
def test_the_paper_size_degradation_jobs_run(tiny_prepared_imagenet: Path, tmp_path: Path, mlflow_uri: str) -> None:
    """Every paper-size job builds and trains (a couple of steps here, on a CPU: the budget is for a GPU)."""
    record = run_study(
        "degradation",
        tiny_prepared_imagenet,
        tmp_path / "paper",
        launch=inprocess_launch,
        tracking_uri=mlflow_uri,
        size="paper",
        overrides=[
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "data.batch_size=8",
        ],
        params={"seeds": []},
    )
    assert record["complete"] and {v["tags"]["model"] for v in record["variants"]} == {
        "plain20",
        "plain56",
        "resnet20",
        "resnet56",
    }
    config = yaml.safe_load((tmp_path / "paper" / "plain-deep" / "config.yaml").read_text())
    assert config["model"]["name"] == "plain56" and config["trainer"]["precision"] == "bf16-mixed"
