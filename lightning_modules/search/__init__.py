"""Hyperparameter search: many short training jobs chosen by Optuna, pruned on early validation loss.

    python -m lightning_modules.search SEARCH_YAML --data PREPARED --out OUT [--tracking-uri URI]

SEARCH_YAML (see configs/search-cpu.yaml) names the base job config(s), the space (dotted job-config
keys such as optim.lr, data.batch_size, optim.momentum, optim.weight_decay, model.dropout.classifier,
each a list of values or a {low, high, log} range), the sampler (grid or random), the pruner
(median, successive_halving or none), the budget (n_trials, epochs_per_trial) and how many trials
run at once (parallel).

Each trial is an ordinary training job (`python -m lightning_modules.train`, started through a
`Launch` function) in OUT/trials/trial_<n>, logging into an MLflow run nested under the search's
parent run; its parameters are plain `--set` overrides, so the job logs them as MLflow params. The
job reports its validation metric to the Optuna study (OUT/optuna.db, see lightning_modules.search.pruning)
each epoch and stops when the pruner says so.

OUT gets optuna.db (the study: rerunning with the same OUT continues it; finished trials are never
trained again, interrupted ones resume), best.yaml (an overlay config for the pretraining job:
`python -m lightning_modules.train BASE OUT/best.yaml ...`), trials.json and figures/search.png.
"""

from lightning_modules.search.cli import build_parser, main
from lightning_modules.search.config import METRICS, SearchConfig, load_search_config
from lightning_modules.search.overrides import overlay, overrides
from lightning_modules.search.plot import plot_search
from lightning_modules.search.results import BEST_FILE, FIGURE, TRIALS_FILE, format_trials, trial_records, write_best
from lightning_modules.search.runner import run_search
from lightning_modules.search.space import ParamSpec
from lightning_modules.search.study import SAMPLERS, STUDY_ATTR_SEARCH, STUDY_NAME
from lightning_modules.search.trial import TRIALS_DIR

__all__ = [
    "BEST_FILE",
    "FIGURE",
    "METRICS",
    "SAMPLERS",
    "STUDY_ATTR_SEARCH",
    "STUDY_NAME",
    "TRIALS_DIR",
    "TRIALS_FILE",
    "ParamSpec",
    "SearchConfig",
    "build_parser",
    "format_trials",
    "load_search_config",
    "main",
    "overlay",
    "overrides",
    "plot_search",
    "run_search",
    "trial_records",
    "write_best",
]
