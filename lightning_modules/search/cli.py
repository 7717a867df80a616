"""Hyperparameter search: many short training jobs chosen by Optuna, pruned on early validation loss.

    python -m lightning_modules.search SEARCH_YAML --data PREPARED --out OUT [--tracking-uri URI]

(also `visionflow search ...`). Prints the trials, best first, and the best configuration (OUT/best.yaml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_modules.errors import VisionflowError
from lightning_modules.reporting.progress import log_to_stderr
from lightning_modules.search.config import load_search_config
from lightning_modules.search.results import format_trials
from lightning_modules.search.runner import run_search


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.search", description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path, help="search YAML (e.g. configs/search-cpu.yaml)")
    p.add_argument("--data", required=True, type=Path, help="prepared classification folder")
    p.add_argument("--out", required=True, type=Path, help="search folder (rerun the same OUT to continue)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: the job config's, else $MLFLOW_TRACKING_URI or ./mlflow.db)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    log_to_stderr()
    try:
        cfg = load_search_config(args.config)
        summary = run_search(cfg, args.data, args.out, tracking_uri=args.tracking_uri)
    except VisionflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: rerun with --out {args.out} to continue (unfinished trials resume)", file=sys.stderr)
        return 130
    print(format_trials(summary))
    print(
        f"\n{summary['n_complete']} complete, {summary['n_pruned']} pruned, {summary['n_failed']} failed; "
        f"MLflow parent run {summary['parent_run_id']} ({summary['tracking_uri']})"
    )
    if summary["best_config"]:
        print(
            f"best: trial {summary['best_trial']} {summary['metric']}={summary['best_value']:.4f} "
            f"-> {summary['best_config']}\n{Path(summary['best_config']).read_text()}"
        )
    return 0
