"""The transfer report: transfer vs scratch learning curves on one plot; start, slope and asymptote gains."""

from __future__ import annotations

from lightning_modules import tracking
from lightning_modules.classification import transfer_report as report
from lightning_modules.steps.promotion import finish
from lightning_modules.steps.report import StepReport, image, typed
from lightning_modules.steps.specs import TransferReportSpec


def transfer_report(spec: TransferReportSpec) -> StepReport:
    gains = report.compare(
        spec.transfer_history, spec.scratch_history, early=spec.settings.early_epochs, metric=spec.metric
    )
    out, uri, run_id = spec.out_dir, spec.tracking_uri, spec.run_id
    out.mkdir(parents=True, exist_ok=True)
    figure = report.plot(
        {"with transfer": spec.transfer_history, "from scratch": spec.scratch_history},
        out / "transfer_vs_scratch.png",
        metric=spec.metric,
        title=spec.title,
    )
    numbers = {k: float(v) for k, v in gains.items() if k.startswith("gain_")}
    numbers.update({f"{who}_{k}": float(v) for who in ("transfer", "scratch") for k, v in gains[who].items()})
    tracking.log_metrics(uri, run_id, numbers)
    tracking.log_figure(uri, run_id, figure)
    tracking.set_tag(uri, run_id, "mlflow.runName", "transfer-vs-scratch")
    tracking.log_params(uri, run_id, {"metric": spec.metric, "early_epochs": spec.settings.early_epochs})
    finish(uri, run_id)
    metadata = {
        **{k: round(v, 4) for k, v in numbers.items()},
        "metric": spec.metric,
        "curves": image(figure, spec.title),
        "mlflow_run": typed(tracking.run_url(uri, run_id, spec.mlflow_ui), "url"),
    }
    return StepReport(metadata)
