"""Hyperparameter search: real Optuna studies of real training jobs (tiny ones) tracked in real MLflow runs.

One grid search (4 trials, 3 epochs, two at a time, median pruner) serves most tests; its
configuration is chosen so pruning is certain: learning rate 1e-6 cannot learn, so a bad trial's
val loss stays near ln(4) while a good trial's drops well below it by epoch 2.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml

from lightning_modules.config import DropoutConfig, load_config
from lightning_modules.errors import ConfigError
from lightning_modules.search import load_search_config, overlay, overrides, run_search
from lightning_modules.tracking.experiments import subprocess_launch

# Fast jobs: a quarter-width ResNet-18 on 32 px images, no loader processes, no gradient monitor.
BASE_JOB = {
    "model": {"name": "resnet18", "width": 0.25, "small_input": True},
    "data": {"batch_size": 8, "num_workers": 0, "image_size": 32, "augment": False},
    "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0, "schedule": "constant"},
    "trainer": {
        "max_epochs": 10,
        "checkpoint_every_n_steps": 1000,
        "log_every_n_steps": 5,
        "grad_monitor_every_n_steps": 0,
    },
    "tracking": {"log_checkpoint": False, "experiment": "test-search-jobs"},
}
GOOD_LR, BAD_LR = 1e-3, 1e-6
EPOCHS = 3
# GridSampler shuffles the grid with the seed; with seed 5 the order is good, bad, good, bad (lr), so
# trial 3 (bad) starts after a good trial completed and is judged against it.
GRID_SEED = 5


def write_search(folder: Path, name: str = "search.yaml", **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE_JOB))
    spec = {"base": ["base.yaml"], "experiment": "test-search", **fields}
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class CountingLaunch:
    """The real subprocess launcher, recording which trials it started."""

    def __init__(self):
        self.run_dirs: list[Path] = []

    def __call__(self, req):
        self.run_dirs.append(req.run_dir)
        return subprocess_launch(req)


@pytest.fixture(scope="module")
def grid_search(tmp_path_factory, tiny_prepared_imagenet, mlflow_uri):
    folder = tmp_path_factory.mktemp("grid")
    path = write_search(
        folder,
        sampler="grid",
        seed=GRID_SEED,
        pruner="median",
        pruner_args={"n_startup_trials": 1, "n_warmup_steps": 2},
        parallel=2,
        epochs_per_trial=EPOCHS,
        space={"optim.lr": [GOOD_LR, BAD_LR], "model.dropout.classifier": [0.0, 0.1]},
    )
    cfg = load_search_config(path)
    launch = CountingLaunch()
    summary = run_search(cfg, tiny_prepared_imagenet, folder / "out", launch=launch, tracking_uri=mlflow_uri)
    return {
        "cfg": cfg,
        "path": path,
        "out": folder / "out",
        "summary": summary,
        "launch": launch,
        "data": tiny_prepared_imagenet,
        "uri": mlflow_uri,
    }


@pytest.mark.slow
def test_grid_search_covers_exactly_the_grid(grid_search):
    s = grid_search["summary"]
    assert len(grid_search["launch"].run_dirs) == 4
    seen = sorted((t["params"]["optim.lr"], t["params"]["model.dropout.classifier"]) for t in s["trials"])
    assert seen == sorted(itertools.product([GOOD_LR, BAD_LR], [0.0, 0.1]))
    assert s["n_complete"] + s["n_pruned"] == 4 and s["n_failed"] == 0
    assert json.loads((grid_search["out"] / "trials.json").read_text()) == s["trials"]
    assert (grid_search["out"] / "figures" / "search.png").stat().st_size > 0
    # Each trial's job ran with its parameters (they reached the job's own config).
    for t in s["trials"]:
        job = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        assert job["optim"]["lr"] == t["params"]["optim.lr"]
        assert job["model"]["dropout"] == {
            "input": 0.0,
            "blocks": 0.0,
            "classifier": t["params"]["model.dropout.classifier"],
        }
        assert job["trainer"]["max_epochs"] == EPOCHS


@pytest.mark.slow
def test_pruning_stops_bad_trials_early(grid_search):
    trials = {t["number"]: t for t in grid_search["summary"]["trials"]}

    def epochs_run(t):  # counted from the job's own per-epoch history
        return len(json.loads((Path(t["run_dir"]) / "history.json").read_text()))

    pruned = [t for t in trials.values() if t["state"] == "PRUNED"]
    assert pruned, f"no trial was pruned: {[(t['params'], t['state'], t['value']) for t in trials.values()]}"
    for t in pruned:
        assert epochs_run(t) == t["epochs_run"] < EPOCHS
        marker = json.loads((Path(t["run_dir"]) / "pruned.json").read_text())
        assert marker["epoch"] == t["pruned_epoch"] == epochs_run(t)
    # The last bad trial ran after a good one completed, so it was judged, and pruned.
    last_bad = max(n for n, t in trials.items() if t["params"]["optim.lr"] == BAD_LR)
    assert trials[last_bad]["state"] == "PRUNED"
    complete = [t for t in trials.values() if t["state"] == "COMPLETE"]
    assert complete and all(epochs_run(t) == EPOCHS for t in complete)
    assert trials[0]["params"]["optim.lr"] == GOOD_LR and trials[0]["state"] == "COMPLETE"


@pytest.mark.slow
def test_trials_are_nested_mlflow_runs_with_the_jobs_params(grid_search):
    from mlflow.tracking import MlflowClient

    s = grid_search["summary"]
    client = MlflowClient(grid_search["uri"])
    parent = client.get_run(s["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_complete"] == s["n_complete"]
    assert parent.data.metrics["n_pruned"] == s["n_pruned"]
    assert parent.data.metrics["best_value"] == pytest.approx(s["best_value"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {r.info.run_id for r in children} == {t["mlflow_run_id"] for t in s["trials"]}
    for t in s["trials"]:
        run = client.get_run(t["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["trial_number"] == str(t["number"])
        assert run.data.tags["state"] == t["state"]
        # Logged by the job itself, as ordinary config params.
        assert float(run.data.params["optim.lr"]) == t["params"]["optim.lr"]
        assert run.data.params["trainer.max_epochs"] == str(EPOCHS)
        assert "val/loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert "search/best.yaml" in artifacts


@pytest.mark.slow
def test_best_yaml_is_an_overlay_with_the_best_params(grid_search):
    s, cfg = grid_search["summary"], grid_search["cfg"]
    best = min((t for t in s["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    assert s["best_trial"] == best["number"] and s["best_params"] == best["params"]
    assert best["params"]["optim.lr"] == GOOD_LR
    job = load_config([*cfg.base, Path(s["best_config"])])
    assert job.optim.lr == best["params"]["optim.lr"]
    assert job.model.dropout == DropoutConfig(classifier=best["params"]["model.dropout.classifier"])
    assert job.trainer.max_epochs == BASE_JOB["trainer"]["max_epochs"]  # trial-only settings stay out


@pytest.mark.slow
def test_rerun_with_the_same_out_trains_nothing(grid_search):
    launch = CountingLaunch()
    cfg = load_search_config(grid_search["path"])
    again = run_search(cfg, grid_search["data"], grid_search["out"], launch=launch, tracking_uri=grid_search["uri"])
    assert launch.run_dirs == []
    assert again["trials"] == grid_search["summary"]["trials"]
    assert again["parent_run_id"] == grid_search["summary"]["parent_run_id"]
    # A different search in the same folder is refused.
    other = write_search(
        grid_search["path"].parent,
        "other.yaml",
        sampler="grid",
        seed=GRID_SEED,
        pruner_args={"n_startup_trials": 1, "n_warmup_steps": 2},
        parallel=2,
        epochs_per_trial=EPOCHS,
        space={"optim.lr": [0.01, BAD_LR], "model.dropout.classifier": [0.0, 0.1]},
    )
    with pytest.raises(ConfigError, match="different search"):
        run_search(
            load_search_config(other),
            grid_search["data"],
            grid_search["out"],
            launch=launch,
            tracking_uri=grid_search["uri"],
        )


@pytest.mark.slow
def test_random_search_samples_inside_bounds(tmp_path, tiny_prepared_imagenet, mlflow_uri):
    path = write_search(
        tmp_path,
        sampler="random",
        seed=1,
        pruner="none",
        n_trials=2,
        parallel=2,
        epochs_per_trial=1,
        space={
            "optim.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "optim.weight_decay": {"low": 0.0, "high": 0.1},
            "data.batch_size": [8, 16],
        },
    )
    summary = run_search(load_search_config(path), tiny_prepared_imagenet, tmp_path / "out", tracking_uri=mlflow_uri)
    assert summary["n_complete"] == 2
    lrs = [t["params"]["optim.lr"] for t in summary["trials"]]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and lrs[0] != lrs[1]
    for t in summary["trials"]:
        assert 0.0 <= t["params"]["optim.weight_decay"] <= 0.1
        assert t["params"]["data.batch_size"] in (8, 16)
        job = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        assert math.isclose(job["optim"]["lr"], t["params"]["optim.lr"])
        assert job["data"]["batch_size"] == t["params"]["data.batch_size"]
    best = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert best["optim"]["lr"] == summary["best_params"]["optim.lr"]


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"space": {"optim.lrr": [0.1]}}, "optim.lrr"),
        ({"sampler": "grid", "space": {"optim.lr": {"low": 0.01, "high": 0.1}}}, "space.optim.lr"),
        ({"space": {"optim.lr": [0.1]}, "n_trails": 3}, "n_trails"),
        ({"space": {"optim.lr": [0.1]}, "sampler": "bayes"}, "sampler"),
        ({"space": {"optim.lr": [0.1]}, "pruner": "median", "pruner_args": {"patience": 3}}, "pruner"),
        ({"space": {"data.batch_size": [16, "big"]}}, "space.data.batch_size"),
        ({"space": {"model.dropout.head": [0.1]}}, "space.model.dropout.head"),
        ({"space": {"optim.lr": {"low": 0.1, "high": 0.01}}}, "space.optim.lr"),
        ({"space": {"optim.lr": [0.1]}, "metric": "val/f1"}, "metric"),
    ],
)
def test_bad_search_config_names_file_and_key(tmp_path, fields, key):
    path = write_search(tmp_path, **fields)
    with pytest.raises(ConfigError) as info:
        load_search_config(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_search_cpu_config_loads():
    cfg = load_search_config(Path(__file__).resolve().parents[2] / "configs" / "search-cpu.yaml")
    assert set(cfg.space) == {
        "optim.lr",
        "data.batch_size",
        "optim.momentum",
        "optim.weight_decay",
        "model.dropout.classifier",
    }
    assert cfg.job_config().optim.name == "sgd"


def test_overrides_keep_every_dropout_group_and_float_types(tmp_path):
    """The job config replaces model.dropout as a whole: searched groups become one merged override."""
    BASE_JOB_DROPOUT = {**BASE_JOB, "model": {**BASE_JOB["model"], "dropout": {"input": 0.05}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE_JOB_DROPOUT))
    base = load_config(tmp_path / "base.yaml")
    values = {"model.dropout.classifier": 0.1, "model.dropout.blocks": 0.2, "optim.lr": 1e-6, "optim.name": "sgd"}
    job = load_config(tmp_path / "base.yaml", overrides(values, base))
    assert job.model.dropout == DropoutConfig(input=0.05, classifier=0.1, blocks=0.2)
    assert job.optim.lr == 1e-6 and isinstance(job.optim.lr, float) and job.optim.name == "sgd"
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(overlay(values, base)))
    assert load_config([tmp_path / "base.yaml", tmp_path / "best.yaml"]) == job


def test_pruning_callback_only_inside_a_search(tmp_path, monkeypatch):
    from lightning_modules.search import pruning

    for key in (pruning.ENV_STORAGE, pruning.ENV_STUDY, pruning.ENV_TRIAL_ID):
        monkeypatch.delenv(key, raising=False)
    assert pruning.pruning_callbacks(tmp_path) == []
    monkeypatch.setenv(pruning.ENV_STORAGE, f"sqlite:///{tmp_path / 'optuna.db'}")
    monkeypatch.setenv(pruning.ENV_STUDY, "search")
    monkeypatch.setenv(pruning.ENV_TRIAL_ID, "1")
    (callback,) = pruning.pruning_callbacks(tmp_path)
    assert callback.args[2] == 1
    assert (
        type(pruning.build_pruner("successive_halving", pruning.PRUNER_DEFAULTS["successive_halving"])).__name__
        == "SuccessiveHalvingPruner"
    )
