"""Measured studies: each launches real training jobs (one nested MLflow run per variant) and ends in a
verdict computed from them plus a plot. `STUDIES` maps a name to its `Study`; `run_study` runs one,
`studies_report` gathers every verdict into one Markdown page.

    python -m lightning_modules.studies NAME --data PREPARED --out OUT_ROOT [--size tiny] [--set k=v]
    python -m lightning_modules.studies report OUT_ROOT
"""

from __future__ import annotations

from lightning_modules.studies.base import SIZES, Study, StudyResults, Variant, VariantResult
from lightning_modules.studies.registry import STUDIES, get_study
from lightning_modules.studies.report import studies_report
from lightning_modules.studies.runner import run_study

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
