"""The MLflow registry for real (SQLite store): the champion alias moves only when the challenger is better."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lightning_modules.errors import DataError
from lightning_modules.tracking import model_registry as registry
from lightning_modules.tracking.bootstrap import Interval, accuracy, paired_bootstrap

NAME = "vf-test-classifier"


def _register(uri: str, tmp_path: Path) -> str:
    client = MlflowClient(uri)
    exp = client.create_experiment(f"e{len(client.search_experiments())}")
    run = client.create_run(exp)
    ckpt = tmp_path / f"{run.info.run_id}.ckpt"
    torch.save(
        {
            "hyper_parameters": {"model": {"name": "linear"}},
            "state_dict": torch.nn.Linear(4, 2).state_dict(),
            "optimizer_states": [{"state": {}}],
        },
        ckpt,
    )
    return registry.log_and_register(uri, run.info.run_id, ckpt, NAME, kind="classifier", spec={"input": [4]})


def _versus(mine: list[bool], theirs: list[bool]):
    """compare(): the paired bootstrap of two models' per-image right/wrong on the same test images."""
    calls = []

    def compare(model_uri: str) -> Interval:
        calls.append(model_uri)
        return paired_bootstrap(accuracy(mine), accuracy(theirs), len(mine))

    return compare, calls


def test_alias_moves_only_when_the_paired_interval_is_above_zero(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    champion = rng.random(300) < 0.60  # right on 60% of 300 test images

    v1 = _register(uri, tmp_path)
    never, _ = _versus([], [])
    d = registry.decide_and_promote(uri, NAME, v1, score=0.60, data_version="a.dir", compare=never)
    assert d.promoted and d.reason == "no champion yet"

    # Equal quality, other mistakes: the same 60%, a different 60% of the images. Not promoted, even a
    # lucky draw a little above the champion.
    v2 = _register(uri, tmp_path)
    equal = rng.permutation(champion)
    equal[np.flatnonzero(~equal)[:3]] = True  # 61%: better on this sample, by noise
    compare, calls = _versus(list(equal), list(champion))
    d = registry.decide_and_promote(uri, NAME, v2, score=float(equal.mean()), data_version="a.dir", compare=compare)
    assert calls == [f"models:/{NAME}/{v1}"]  # the champion is scored again on the same images
    assert not d.promoted and "is not shown better than champion" in d.reason and "95% interval [-" in d.reason
    assert str(registry.champion(uri, NAME).version) == v1
    tags = MlflowClient(uri).get_model_version(NAME, v2).tags
    assert tags["promotion"] == d.reason and tags["promotion_interval"].startswith("[-")

    # Clearly better: right wherever the champion is, and on half of its mistakes. Promoted.
    v3 = _register(uri, tmp_path)
    better = champion | (rng.random(300) < 0.5)
    compare, _ = _versus(list(better), list(champion))
    d = registry.decide_and_promote(uri, NAME, v3, score=float(better.mean()), data_version="a.dir", compare=compare)
    assert d.promoted and "beats champion" in d.reason and d.champion_score == pytest.approx(champion.mean())
    assert str(registry.champion(uri, NAME).version) == v3


def test_failed_gates_block_promotion_whatever_the_score(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    v1 = _register(uri, tmp_path)
    never, calls = _versus([], [])
    registry.decide_and_promote(uri, NAME, v1, score=0.5, data_version="a.dir", compare=never)
    v2 = _register(uri, tmp_path)
    d = registry.decide_and_promote(uri, NAME, v2, score=0.99, data_version="a.dir", compare=never, gates_passed=False)
    assert not d.promoted and d.reason == "quality gates failed" and calls == []
    assert str(registry.champion(uri, NAME).version) == v1


def test_a_champion_made_for_other_classes_is_replaced_with_the_reason(tmp_path: Path) -> None:
    """When the data's classes change, the champion cannot be scored on the new test set: the challenger
    (gates passed) takes over and the version says why; with failed gates it still does not."""
    from lightning_modules.steps.evaluation import same_classes

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    never, _ = _versus([], [])
    v1 = _register(uri, tmp_path)
    registry.decide_and_promote(uri, NAME, v1, score=0.9, data_version="a.dir", compare=never)

    def compare(model_uri: str) -> Interval:
        same_classes(["disk", "square"], ["red_ring", "blue_heart"])  # the champion's classes, the test set's
        raise AssertionError("same_classes must refuse")

    v2 = _register(uri, tmp_path)
    d = registry.decide_and_promote(uri, NAME, v2, score=0.4, data_version="b.dir", compare=compare, gates_passed=False)
    assert not d.promoted and str(registry.champion(uri, NAME).version) == v1
    v3 = _register(uri, tmp_path)
    d = registry.decide_and_promote(uri, NAME, v3, score=0.4, data_version="b.dir", compare=compare)
    assert d.promoted and d.reason.startswith(f"replaces champion v{v1}, made for another task: it predicts ['disk'")
    assert str(registry.champion(uri, NAME).version) == v3
    assert MlflowClient(uri).get_model_version(NAME, v3).tags["promotion"] == d.reason
    same_classes(["a", "b"], ["a", "b"])  # the same classes: comparable, no exception
    same_classes(None, ["a", "b"])  # an old checkpoint without class names: compared as before


def test_a_version_holds_weights_and_settings_only_and_loads_without_pickle(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = _register(uri, tmp_path)
    path = registry.download(uri, f"models:/{NAME}/{version}", kind="classifier")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert set(blob) == {"hyper_parameters", "state_dict"}  # no optimizer state, no pickled objects
    assert MlflowClient(uri).get_model_version(NAME, version).run_id  # the version links to its run
    with pytest.raises(DataError, match="is a classifier, not a detector"):
        registry.download(uri, f"models:/{NAME}/{version}", kind="detector")
