"""Run a study: a parent MLflow run, one launched job per variant in a nested run, then verdict + plot.

OUT (the study's folder) holds one run folder per variant (OUT/<variant>/), the plot OUT/<study>.png
and OUT/verdict.json; OUT/mlflow_run_id is the parent run. Rerunning the same study into the same
OUT trains nothing that finished: a variant whose RUN_DIR holds a finished result.json is checked
against the config it would run (ConfigError if it differs, as the job itself would) and reused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from lightning_modules import tracking, train
from lightning_modules.errors import ConfigError, DataError
from lightning_modules.paths import project_root
from lightning_modules.reporting.progress import track
from lightning_modules.studies import criteria
from lightning_modules.studies.base import SIZES, Study, StudyResults, VariantResult
from lightning_modules.studies.registry import get_study
from lightning_modules.studies.seeds import expand, failures, merge, per_seed, seeds_of, spread
from lightning_modules.tracking.experiments import (
    JobFailed,
    JobRequest,
    JobResult,
    Launch,
    child_run,
    finish_run,
    parent_run,
    read_result,
    subprocess_launch,
)
from lightning_modules.training.run_folder import check_same_job, run_state

log = logging.getLogger("visionflow")

EXPERIMENT = "visionflow-studies"
VERDICT_FILE = "verdict.json"
STUDY_TAG = "visionflow.study"


def config_path(study: Study) -> Path:
    """The study's base job config: configs/<file> under the project root (else beside this package)."""
    for root in (project_root(), Path(__file__).resolve().parents[2]):
        path = root / "configs" / study.config
        if path.is_file():
            return path
    raise ConfigError(f"configs/{study.config}: base config of study {study.name!r} not found")


def resolve_data(data: Path, dataset: str) -> Path:
    """A prepared set (manifest.json inside) or a prepared root holding `dataset`/manifest.json."""
    data = Path(data).resolve()
    if (data / "manifest.json").is_file():
        return data
    if (data / dataset / "manifest.json").is_file():
        return data / dataset
    raise DataError(data, f"no manifest.json here or in {dataset}/: pass a prepared set or the prepared root")


def inprocess_launch(req: JobRequest) -> JobResult:
    """Run the job in this Python process (no interpreter start-up: ~15 s less per job on a small CPU).

    Same job, same files and MLflow logging as `subprocess_launch`; useful for CPU studies and tests.
    The process's torch thread count and environment are restored afterwards.
    """
    import torch  # lazy: the study registry (loaded by Dagster and the CLI) must not import torch

    req.run_dir.mkdir(parents=True, exist_ok=True)
    saved_env = dict(os.environ)  # the job's env, and what Lightning sets (PL_GLOBAL_SEED, ...), stay in it
    threads = torch.get_num_threads()
    os.environ.update(req.env)
    try:
        rc = train.main(req.argv())
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(saved_env)
    if rc != 0:
        raise JobFailed(f"{req.run_dir}: training job returned {rc}")
    return read_result(req.run_dir)


LAUNCHERS: dict[str, Launch] = {"subprocess": subprocess_launch, "inprocess": inprocess_launch}


def stored_result(req: JobRequest) -> JobResult | None:
    """The result of a finished RUN_DIR if it ran this same job (ConfigError if it ran another)."""
    if run_state(req.run_dir) != "finished":
        return None
    check_same_job(req.run_dir, req.validate(), req.data)
    return read_result(req.run_dir)


def run_study(
    study_name: str,
    data: Path,
    out: Path,
    *,
    launch: Launch = subprocess_launch,
    tracking_uri: str | None = None,
    size: str = "default",
    overrides: list[str] | tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
    experiment: str = EXPERIMENT,
    config: Path | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run every variant of `study_name` (skipping finished ones), then write and log its verdict.

    data: a prepared set, or the prepared root (the study picks imagenet/ or transfer/).
    overrides: `--set` items for every job (e.g. trainer.max_epochs=30 to scale up); a variant's own
    overrides win over them. params: the study's own knobs (e.g. {"p": [0, 0.5]} for dropout).
    env: extra environment of every job, e.g. {"VISIONFLOW_THREADS": "1"} on a shared CPU machine.
    Returns the verdict dict written to OUT/verdict.json.
    """
    study = get_study(study_name)
    if size not in SIZES:
        raise ConfigError(f"size={size!r} is not one of {', '.join(SIZES)}")
    data = resolve_data(data, study.dataset)
    out = Path(out).resolve()
    base = Path(config).resolve() if config else config_path(study)
    if not base.is_file():
        raise ConfigError(f"{base}: study config not found")
    uri = tracking.resolve_uri(tracking_uri)
    tracking.ensure_store(uri)
    p = study.params_for(size, params)
    seeds = seeds_of(p)
    base_variants = study.variants(p)
    variants = expand(base_variants, seeds)  # one job per (variant, seed) when `seeds` is given
    common = [*study.size_overrides(size), *overrides]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"study {study.name}: variant names repeat ({names}); check its params")

    start = time.monotonic()
    requests = [_request(v, base, data, out, common, uri, experiment, env or {}) for v in variants]
    # Finished variants first (cheap): a run folder that ran another config fails before anything starts.
    stored = [stored_result(req) for req in requests]
    parent = parent_run(
        uri, experiment, out, f"study-{study.name}", {STUDY_TAG: study.name, "size": size, "data_dir": str(data)}
    )
    tracking.set_tag(uri, parent, "study.params", p.model_dump_json())
    declare_rules(uri, parent, p.rules)  # before any job: the criteria are fixed before the results
    results: list[VariantResult] = []
    try:
        for v, req, done in track(list(zip(variants, requests, stored)), f"study {study.name}", total=len(variants)):
            results.append(_run_variant(study, v, req, done, uri, experiment, parent, launch))
        if not any(r.ok for r in results):
            raise JobFailed(f"study {study.name}: every variant failed: {results[0].error if results else 'none'}")
        ctx = {
            "study": study.name,
            "out": out,
            "data": data,
            "configs": [base],
            "overrides": common,
            "params": p,
            "size": size,
            "env": env or {},
        }
        extra = study.extra(ctx) if study.extra else {}
        res = StudyResults(merge(base_variants, results, seeds), p, extra)
        verdict = study.verdict(res)
        numbers, text = spread(base_variants, results, seeds)
        n_failed, failed_text = failures(results)
        numbers["failed_runs"] = float(n_failed)
        # The declared rules, judged on each seed's own numbers (the same verdict code, one seed at a time).
        seed_numbers = [study.verdict(r)["numbers"] for r in per_seed(base_variants, results, seeds, p, extra)]
        _check_figures(study, p.rules, seed_numbers)
        judged = criteria.evaluate(p.rules, seed_numbers)
        verdict = {
            **verdict,
            "numbers": {**verdict["numbers"], **numbers},
            "text": failed_text + verdict["text"] + text,
            "rules_summary": criteria.summary(judged) if p.rules else "no declared rule",
            "complete": n_failed == 0,
            "claim": study.question,
            "seeds": seeds,
            **judged,
            "intervals": criteria.intervals(seed_numbers) if len(seed_numbers) > 1 else {},
            "failed_runs": [r.name for r in results if not r.ok],
        }
        plot_path = study.plot(res, out / f"{study.name}.png")
        record = _record(
            study, size, p, verdict, plot_path, results, parent, uri, experiment, data, extra, time.monotonic() - start
        )
        (out / VERDICT_FILE).write_text(json.dumps(record, indent=1, default=str))
        _log_parent(uri, parent, record, out, plot_path, extra)
    except BaseException:
        finish_run(uri, parent, "FAILED")
        raise
    finish_run(uri, parent, "FINISHED")
    log.info("study %s: %s", study.name, record["text"])
    return record


def declare_rules(uri: str, parent: str, rules: list[criteria.Rule]) -> None:
    """The rules as params of the study's MLflow run. A folder whose run was judged by other rules is
    refused: a criterion cannot change after its results are in (use a new output folder)."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import

    declared = {f"rule.{i}.{k}": str(v) for i, r in enumerate(rules) for k, v in r.model_dump().items()}
    declared["rules"] = str(len(rules))
    before = MlflowClient(uri).get_run(parent).data.params
    changed = sorted(k for k in declared if k in before and before[k] != declared[k])
    if changed or (before.get("rules") and before["rules"] != declared["rules"]):
        raise ConfigError(
            f"this study folder's MLflow run {parent} was judged by other rules ({', '.join(changed) or 'count'}): "
            "changing a declared criterion after its results is not allowed; use a new output folder"
        )
    tracking.log_params(uri, parent, {k: v for k, v in declared.items() if k not in before})


def _check_figures(study: Study, rules: list[criteria.Rule], seed_numbers: list[dict[str, Any]]) -> None:
    known = set().union(*(n.keys() for n in seed_numbers)) if seed_numbers else set()
    unknown = [r.figure for r in rules if r.figure not in known]
    if unknown:
        raise ConfigError(
            f"study {study.name}: rule figure(s) {', '.join(unknown)} are not numbers this study computes "
            f"(it computes: {', '.join(sorted(known))})"
        )


def _request(
    v, base: Path, data: Path, out: Path, common: list[str], uri: str, experiment: str, env: dict[str, str]
) -> JobRequest:
    overrides = [*common, *v.overrides, f"tracking.tracking_uri={uri}", f"tracking.experiment={experiment}"]
    return JobRequest(configs=(str(base),), data=data, run_dir=out / v.name, overrides=tuple(overrides), env=env)


def _run_variant(
    study: Study,
    v,
    req: JobRequest,
    done: JobResult | None,
    uri: str,
    experiment: str,
    parent: str,
    launch: Launch,
) -> VariantResult:
    run_dir = req.run_dir
    if done is not None:
        log.info("study %s: %s already finished, reusing %s", study.name, v.name, run_dir)
        return VariantResult(v.name, dict(v.tags), run_dir, dict(done))
    tags = {STUDY_TAG: study.name, "variant": v.name, **{f"study.{k}": str(val) for k, val in v.tags.items()}}
    child = child_run(uri, experiment, parent, run_dir, f"{study.name}/{v.name}", tags)
    req = req.with_overrides(f"tracking.run_id={child}")
    try:
        result = launch(req)
    except JobFailed as exc:
        finish_run(uri, child, "FAILED")
        if not study.tolerate_failures:
            raise
        log.warning("study %s: variant %s failed: %s", study.name, v.name, exc)
        return VariantResult(v.name, dict(v.tags), run_dir, {}, error=str(exc).splitlines()[-1][:500])
    return VariantResult(v.name, dict(v.tags), run_dir, dict(result))


def _record(study, size, params, verdict, plot_path, results, parent, uri, experiment, data, extra, seconds):
    return {
        "study": study.name,
        "title": study.title,
        "question": study.question,
        "size": size,
        "params": params.model_dump(),
        "numbers": verdict["numbers"],
        "text": verdict["text"],
        **{k: v for k, v in verdict.items() if k not in ("numbers", "text")},
        "plot": plot_path.name,  # relative to the study folder (OUT)
        "plot_path": str(plot_path),
        "out": str(plot_path.parent),
        "variants": [
            {
                "name": r.name,
                "tags": r.tags,
                "run_dir": str(r.run_dir),
                "ok": r.ok,
                "error": r.error,
                "mlflow_run_id": r.result.get("mlflow_run_id"),
                "fit_seconds": r.result.get("fit_seconds_this_attempt"),
            }
            for r in results
        ],
        "extra": {k: v for k, v in extra.items() if k != "artifacts"},
        "parent_run_id": parent,
        "tracking_uri": uri,
        "experiment": experiment,
        "data": str(data),
        "seconds": round(seconds, 1),  # this call's wall time (a rerun reuses finished jobs)
        "fit_seconds_total": round(sum(r.result.get("fit_seconds_this_attempt") or 0 for r in results), 1),
    }


def metric_name(key: str) -> str:
    """MLflow metric names allow letters, digits and _ - . / and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _log_parent(uri: str, parent: str, record: dict, out: Path, plot_path: Path, extra: dict) -> None:
    numbers = {
        f"verdict/{metric_name(k)}": float(v)
        for k, v in record["numbers"].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    numbers["study/seconds"] = record["seconds"]
    tracking.log_metrics(uri, parent, numbers)
    tracking.set_tag(uri, parent, "verdict", f"{record['verdict']}: {record['rules_summary']}")
    tracking.set_tag(uri, parent, "measured", record["text"])
    tracking.log_artifact(uri, parent, out / VERDICT_FILE, "study")
    tracking.log_artifact(uri, parent, plot_path, "study")
    for path in extra.get("artifacts", []):
        tracking.log_artifact(uri, parent, Path(path), "study/extra")
