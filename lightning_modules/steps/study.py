"""A measured study as one step: its training jobs run one after another inside the step's process
(`inprocess_launch`: no interpreter, torchrun or MLflow start-up per job, about 12 s each on a 2-core CPU,
where the jobs themselves train for 4 to 30 s), where the step runs, so on the cluster deployment the
whole study runs in the training image next to the GPU. Each job still gets its own run folder, nested
MLflow run and result.json; Dagster sees one Pipes session with the verdict.
Run by `python -m lightning_modules.steps study SPEC.json`."""

from __future__ import annotations

from pathlib import Path

from lightning_modules import tracking
from lightning_modules.steps.report import StepReport, image, typed
from lightning_modules.steps.specs import StudySpec
from lightning_modules.studies import run_study
from lightning_modules.studies.runner import inprocess_launch

# The jobs report to their result.json: the step itself holds the one Pipes session.
JOB_ENV = {"VISIONFLOW_REPORTER": "json"}


def study(spec: StudySpec) -> StepReport:
    record = run_study(
        spec.study,
        Path(spec.data),
        spec.out_dir,
        launch=inprocess_launch,
        tracking_uri=spec.tracking_uri,
        size=spec.size,
        overrides=spec.overrides,
        params={"seeds": spec.seeds} if spec.seeds is not None else None,
        env=JOB_ENV,
    )
    numbers = {k: v for k, v in record["numbers"].items() if isinstance(v, (int, float)) and v == v}
    plot = Path(record["plot_path"])
    parent_url = tracking.run_url(spec.tracking_uri, record["parent_run_id"], spec.mlflow_ui)
    rules = "\n".join(
        f"- {r['claim']}: `{r['figure']}` {r['op']} {r['threshold']:g}: **{r['verdict']}**" for r in record["rules"]
    )
    return StepReport(
        metadata={
            "verdict": record["verdict"],  # confirmed / refuted / not distinguishable
            "rules": typed(rules or "_no declared rule_", "md"),
            "measured": typed(record["text"], "md"),
            **{k: float(f"{v:.4g}") for k, v in numbers.items()},  # 4 significant digits: ratios reach 1e-10
            "plot": image(plot, spec.study) if plot.is_file() else "no plot",
            "variants": typed([{k: v[k] for k in ("name", "ok", "mlflow_run_id")} for v in record["variants"]], "json"),
            "mlflow_parent_run": typed(parent_url, "url"),
            "size": spec.size,
            "seeds": typed(record["seeds"], "json"),
            "seconds": record["seconds"],
        },
        message=f"study {spec.study}: {record['verdict']}",
    )
