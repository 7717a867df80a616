"""What a search leaves in OUT: trials.json (one record per trial), best.yaml (the best trial's values as an
overlay job config), figures/search.png, the parent run's metrics and artifacts, and the summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from lightning_modules import tracking
from lightning_modules.config import JobConfig
from lightning_modules.search.config import SearchConfig
from lightning_modules.search.overrides import overlay
from lightning_modules.search.plot import plot_search
from lightning_modules.search.study import STUDY_NAME, Context

log = logging.getLogger("visionflow")

BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.json"
FIGURE = "figures/search.png"


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, params, value, epochs_run, run_dir, mlflow_run_id, ..."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        run_dir = t.user_attrs.get("run_dir")
        epochs = t.user_attrs.get("epochs_run")
        if epochs is None and run_dir:
            epochs = len(read_history(Path(run_dir)))
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "epochs_run": epochs,
                "run_dir": run_dir,
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                **{k: t.user_attrs[k] for k in ("pruned_epoch", "error") if k in t.user_attrs},
            }
        )
    return rows


def finish(ctx: Context) -> dict[str, Any]:
    """Write trials.json, best.yaml and the figure, log them to the parent run; the search's summary."""
    from optuna.trial import TrialState  # heavy (sqlalchemy, alembic): only when a search runs

    cfg, out = ctx.cfg, ctx.out
    rows = trial_records(ctx.study)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    complete = [t for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = ctx.study.best_trial if complete else None
    (out / TRIALS_FILE).write_text(json.dumps(rows, indent=1))
    best_path = None
    if best is not None:
        best_path = write_best(
            cfg, ctx.base, best.params, out / BEST_FILE, comment=f"trial {best.number}: {cfg.metric}={best.value:.5g}"
        )
    else:
        log.warning("search %s: no trial completed, so there is no best configuration", out)
    figure = plot_search(rows, cfg, out / FIGURE)
    metrics = {"n_complete": counts["COMPLETE"], "n_pruned": counts["PRUNED"], "n_failed": counts["FAIL"]}
    if best is not None:
        metrics["best_value"] = best.value
    tracking.log_metrics(ctx.uri, ctx.parent_id, metrics, step=len(rows))
    for path, folder in ((best_path, "search"), (out / TRIALS_FILE, "search"), (figure, "figures")):
        if path is not None:
            tracking.log_artifact(ctx.uri, ctx.parent_id, path, folder)
    if best is not None:
        tracking.set_tag(ctx.uri, ctx.parent_id, "best_trial", str(best.number))
    return {
        "out": str(out),
        "study": STUDY_NAME,
        "storage": ctx.storage_url,
        "metric": cfg.metric,
        "direction": cfg.direction,
        "n_trials": len(rows),
        **metrics,
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "best_params": dict(best.params) if best else None,
        "best_config": str(best_path) if best_path else None,
        "figure": str(figure) if figure else None,
        "trials": rows,
        "parent_run_id": ctx.parent_id,
        "tracking_uri": ctx.uri,
        "experiment": cfg.experiment,
    }


def write_best(cfg: SearchConfig, base: JobConfig, params: dict[str, Any], path: Path, comment: str = "") -> Path:
    """best.yaml: the searched values (and the search's fixed settings) as an overlay job config."""
    nested = overlay({**cfg.fixed, **params}, base)
    header = (
        f"# Best configuration of search {cfg.name} ({cfg.source}); {comment}\n"
        f"# Overlay on {cfg.base_names()}: python -m lightning_modules.train BASE {path.name} ...\n"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + yaml.safe_dump(nested, sort_keys=True))
    tmp.replace(path)
    return path


def format_trials(summary: dict[str, Any]) -> str:
    """The trials as a text table, best first."""
    rows = summary["trials"]
    keys = sorted({k for r in rows for k in r["params"]})
    sign = 1 if summary["direction"] == "minimize" else -1
    order = sorted(
        rows,
        key=lambda r: (
            r["value"] is None,
            r["state"] != "COMPLETE",
            sign * (r["value"] if r["value"] is not None else 0),
        ),
    )
    head = ["trial", "state", summary["metric"], "epochs", *keys]
    table = [
        [
            str(r["number"]),
            r["state"],
            f"{r['value']:.4f}" if r["value"] is not None else "-",
            str(r["epochs_run"] if r["epochs_run"] is not None else "-"),
            *(short(r["params"].get(k, "-")) for k in keys),
        ]
        for r in order
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *table])


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """A job's per-epoch records (RUN_DIR/history.json); [] before its first epoch."""
    path = run_dir / "history.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError:
        return []


def short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
