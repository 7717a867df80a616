"""Measured studies: each launches real training jobs (one nested MLflow run per variant) and ends in a
verdict computed from them plus a plot. `STUDIES` maps a name to its `Study`; `run_study` runs one,
`studies_report` gathers every verdict into one Markdown page.

    python -m lightning_modules.studies NAME --data PREPARED --out OUT_ROOT [--size tiny] [--set k=v]
    python -m lightning_modules.studies report OUT_ROOT
"""

from __future__ import annotations

from lightning_modules.errors import ConfigError
from lightning_modules.studies import activations, batch_lr, degradation, dropout, epochs, vanishing
from lightning_modules.studies.base import SIZES, Study, StudyResults, Variant, VariantResult

STUDIES: dict[str, Study] = {
    s.name: s
    for s in (vanishing.STUDY, degradation.STUDY, dropout.STUDY, batch_lr.STUDY, epochs.STUDY, activations.STUDY)
}


def get_study(name: str) -> Study:
    try:
        return STUDIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"study {name!r} is unknown; choose one of: {', '.join(STUDIES)}") from None


def run_study(*args, **kwargs):
    """See runner.run_study (imported lazily)."""
    from lightning_modules.studies.runner import run_study as run

    return run(*args, **kwargs)


def studies_report(*args, **kwargs):
    """See report.studies_report (imported lazily)."""
    from lightning_modules.studies.report import studies_report as report

    return report(*args, **kwargs)


__all__ = [
    "SIZES",
    "STUDIES",
    "Study",
    "StudyResults",
    "Variant",
    "VariantResult",
    "get_study",
    "run_study",
    "studies_report",
]
