"""The MLflow registry for real (SQLite store): the champion alias moves only when the challenger is better."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from lightning_modules.errors import DataError
from lightning_modules.tracking import model_registry as registry

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


def test_alias_moves_only_for_a_better_model_on_the_same_data(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    never = lambda model_uri: (_ for _ in ()).throw(AssertionError("same data: no re-scoring needed"))  # noqa: E731

    v1 = _register(uri, tmp_path)
    d = registry.decide_and_promote(uri, NAME, v1, score=0.60, data_version="a.dir", rescore=never)
    assert d.promoted and d.reason == "no champion yet"

    v2 = _register(uri, tmp_path)
    d = registry.decide_and_promote(uri, NAME, v2, score=0.55, data_version="a.dir", rescore=never)
    assert not d.promoted and "does not beat" in d.reason and d.champion_score == 0.60
    assert str(registry.champion(uri, NAME).version) == v1
    assert MlflowClient(uri).get_model_version(NAME, v2).tags["promotion"] == d.reason

    v3 = _register(uri, tmp_path)
    d = registry.decide_and_promote(uri, NAME, v3, score=0.70, data_version="a.dir", rescore=never)
    assert d.promoted and str(registry.champion(uri, NAME).version) == v3


def test_champion_from_other_data_is_rescored_and_gates_block(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    v1 = _register(uri, tmp_path)
    registry.decide_and_promote(uri, NAME, v1, score=0.90, data_version="old.dir", rescore=lambda u: 0.0)
    rescored = []
    v2 = _register(uri, tmp_path)
    # On the new data the old champion only reaches 0.40, so 0.50 wins although 0.50 < 0.90.
    d = registry.decide_and_promote(
        uri, NAME, v2, score=0.50, data_version="new.dir", rescore=lambda model_uri: rescored.append(model_uri) or 0.40
    )
    assert rescored == [f"models:/{NAME}/{v1}"] and d.promoted and "re-scored" in d.reason

    v3 = _register(uri, tmp_path)
    d = registry.decide_and_promote(
        uri, NAME, v3, score=0.99, data_version="new.dir", rescore=lambda u: 0.0, gates_passed=False
    )
    assert not d.promoted and d.reason == "quality gates failed"
    assert str(registry.champion(uri, NAME).version) == v2


def test_a_version_holds_weights_and_settings_only_and_loads_without_pickle(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = _register(uri, tmp_path)
    path = registry.download(uri, f"models:/{NAME}/{version}", kind="classifier")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert set(blob) == {"hyper_parameters", "state_dict"}  # no optimizer state, no pickled objects
    assert MlflowClient(uri).get_model_version(NAME, version).run_id  # the version links to its run
    with pytest.raises(DataError, match="is a classifier, not a detector"):
        registry.download(uri, f"models:/{NAME}/{version}", kind="detector")
