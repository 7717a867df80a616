"""One Markdown page with every study's verdict and plot (and a link to the transfer report).

Reads OUT_ROOT/<study>/verdict.json as written by `run_study`; images are referenced relative to the
page (OUT_ROOT/studies_report.md), so the folder can be moved or uploaded as an MLflow artifact whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning_modules import tracking
from lightning_modules.errors import DataError
from lightning_modules.studies.registry import STUDIES
from lightning_modules.studies.runner import EXPERIMENT, VERDICT_FILE
from lightning_modules.tracking.experiments import finish_run, parent_run

REPORT_FILE = "studies_report.md"
TRANSFER_LINE = "Transfer learning (pretrained vs scratch) is measured by the transfer report"


def load_verdicts(out_root: Path) -> list[dict[str, Any]]:
    """The latest verdict.json of every study under OUT_ROOT, in the registry's order.

    A study's folder is OUT_ROOT/<study>/ (the CLI) or OUT_ROOT/<study>/<setting>/ (Dagster keeps one
    per size and overrides, so a scaled-up run never collides with the default one); when a study has
    several, the most recently written verdict wins.
    """

    found: dict[str, tuple[float, dict[str, Any]]] = {}
    for path in Path(out_root).rglob(VERDICT_FILE):
        record = json.loads(path.read_text())
        record["_dir"] = path.parent
        name, mtime = record.get("study", path.parent.name), path.stat().st_mtime
        if name not in found or mtime > found[name][0]:
            found[name] = (mtime, record)
    order = [n for n in STUDIES if n in found] + sorted(n for n in found if n not in STUDIES)
    return [found[n][1] for n in order]


def render(
    verdicts: list[dict[str, Any]],
    page_dir: Path,
    transfer_report: str | Path | None = None,
    search: dict[str, Any] | None = None,
) -> str:
    """search: the hyperparameter search's summary ({"metric", "best_value", "best_params", "url"}), if any."""

    lines = ["# Measured studies", ""]
    if verdicts:
        lines += ["| study | verdict | seeds | size | jobs | training minutes |", "|---|---|---|---|---|---|"]
        for v in verdicts:
            lines.append(
                f"| [{v.get('title', v['study'])}](#{_anchor(v.get('title', v['study']))}) | "
                f"{v.get('verdict', 'n/a')}{'' if v.get('complete', True) else ' (incomplete)'} | "
                f"{len(v.get('seeds') or []) or 1} | {v.get('size')} | "
                f"{len(v.get('variants', []))} | {float(v.get('fit_seconds_total') or 0) / 60:.1f} |"
            )
        lines.append("")
    missing = [n for n in STUDIES if n not in {v["study"] for v in verdicts}]
    if missing:
        lines += [f"Not run yet: {', '.join(missing)}.", ""]
    if transfer_report:
        target = (
            _relative(Path(transfer_report), page_dir)
            if not str(transfer_report).startswith(("http:", "https:"))
            else str(transfer_report)
        )
        lines += [f"{TRANSFER_LINE}: [transfer report]({target}).", ""]
    else:
        lines += [f"{TRANSFER_LINE} (the `transfer_report` asset).", ""]
    if search:
        lines += [
            f"Hyperparameter search: best {search.get('metric', 'value')} {_g(search.get('best_value'))} with "
            f"`{search.get('best_params')}`" + (f" ([MLflow]({search['url']}))" if search.get("url") else "") + ".",
            "",
        ]
    for v in verdicts:
        title = v.get("title", v["study"])
        lines += [f"## {title}", ""]
        lines += _declared(v)
        lines += [f"**Measured.** {v['text']}", ""]
        image = Path(v["_dir"]) / v["plot"]
        lines += [f"![{title}]({_relative(image, page_dir)})", ""]
        numbers = {
            k: x for k, x in v.get("numbers", {}).items() if isinstance(x, (int, float)) and not isinstance(x, bool)
        }
        if numbers:
            spans = v.get("intervals") or {}
            head = "| measure | mean over seeds | 95% interval |" if spans else "| measure | value | |"
            lines += ["<details><summary>numbers</summary>", "", head, "|---|---|---|"]
            lines += [f"| {k} | {_mean(spans.get(k), x):.4g} | {_span(spans.get(k))} |" for k, x in numbers.items()]
            lines += ["", "</details>", ""]
        runs = ", ".join(f"{r['name']}" + ("" if r.get("ok", True) else " (failed)") for r in v.get("variants", []))
        lines += [
            f"Runs: {runs}. MLflow parent run `{v.get('parent_run_id')}` in experiment `{v.get('experiment')}`.",
            "",
        ]
    return "\n".join(lines)


def _declared(v: dict[str, Any]) -> list[str]:
    """The claim and the rules first (they were fixed before the runs), then the verdict with intervals."""
    lines = [f"**Claim.** {v.get('claim') or v.get('question') or 'n/a'}", ""]
    rules = v.get("rules") or []
    if not rules:
        return lines + ["No declared rule (an older verdict.json): numbers only.", ""]
    seeds = v.get("seeds") or []
    lines += ["**Declared rules** (in the study's config, recorded as params of its MLflow run):", ""]
    lines += [
        f"- {r['claim']}: `{r['figure']}` {r['op']} {r['threshold']:g} over the whole 95% interval" for r in rules
    ]
    lines += ["", f"**Verdict: {v.get('verdict', 'n/a')}** ({len(seeds) or 1} seed(s): {seeds or 'one run'})", ""]
    lines += ["| rule | figure | mean | 95% interval | per seed | verdict |", "|---|---|---|---|---|---|"]
    for r in rules:
        f = v.get("figures", {}).get(r["figure"], {})
        ci = f.get("ci95")
        per_seed = ", ".join("n/a" if x is None else f"{x:.4g}" for x in f.get("values", []))
        mean = "n/a" if f.get("mean") is None else f"{f['mean']:.4g}"
        interval = "n/a (fewer than 2 seeds)" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"
        lines.append(f"| {r['claim']} | `{r['figure']}` | {mean} | {interval} | {per_seed} | {r['verdict']} |")
    if v.get("failed_runs"):
        lines += ["", f"**Incomplete:** runs that failed, left out of the figures: {', '.join(v['failed_runs'])}."]
    return lines + [""]


def studies_report(
    out_root: Path,
    *,
    transfer_report: str | Path | None = None,
    tracking_uri: str | None = None,
    out: Path | None = None,
    search: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write OUT_ROOT/studies_report.md; with `tracking_uri` also log it (and the plots) to an MLflow run
    "studies-report" in the studies' experiment. Returns {"path", "markdown", "studies", "mlflow_run_id"}."""
    out_root = Path(out_root).resolve()
    if not out_root.is_dir():
        raise DataError(out_root, "no such studies folder (run a study into it first)")
    verdicts = load_verdicts(out_root)
    if not verdicts:
        raise DataError(out_root, "no <study>/verdict.json found: run a study into this folder first")
    page = Path(out).resolve() if out else out_root / REPORT_FILE
    markdown = render(verdicts, page.parent, transfer_report, search)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(markdown)
    run_id = _log_report(tracking_uri, out_root, page, verdicts) if tracking_uri else None
    return {"path": str(page), "markdown": markdown, "studies": [v["study"] for v in verdicts], "mlflow_run_id": run_id}


def _log_report(uri: str, out_root: Path, page: Path, verdicts: list[dict[str, Any]]) -> str:
    """The page and the plots in their relative layout, so the Markdown renders from the artifact folder."""

    experiment = verdicts[0].get("experiment") or EXPERIMENT
    run_id = parent_run(uri, experiment, out_root, "studies-report", {"visionflow.studies_report": "1"})
    tracking.log_artifact(uri, run_id, page, "report")
    for v in verdicts:
        image = Path(v["_dir"]) / v["plot"]
        if image.is_file():
            rel = _relative(image, page.parent)
            tracking.log_artifact(uri, run_id, image, str(Path("report") / Path(rel).parent))
    finish_run(uri, run_id)
    return run_id


def _g(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _mean(figure: dict[str, Any] | None, fallback: float) -> float:
    """The mean of the per-seed values where there are several seeds, else the single run's number."""
    mean = (figure or {}).get("mean")
    return float(mean) if mean is not None else fallback


def _span(figure: dict[str, Any] | None) -> str:
    ci = (figure or {}).get("ci95")
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() or c == "-" else "" for c in title.lower().replace(" ", "-"))
