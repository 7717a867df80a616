"""What rank 0 reports and how progress shows: reporters (json, and Dagster Pipes when Dagster launched
the job), progress bars and log lines.

    reporting.make_reporter(run_dir)  # VISIONFLOW_REPORTER picks "json" (default) or "pipes"
"""

from lightning_modules.reporting.pipes import PipesReporter
from lightning_modules.reporting.reporters import (
    REPORTERS,
    JsonReporter,
    NullReporter,
    Reporter,
    close_open_reporters,
    fail_open_reporters,
    make_reporter,
)

REPORTERS["pipes"] = PipesReporter

__all__ = [
    "REPORTERS",
    "JsonReporter",
    "NullReporter",
    "PipesReporter",
    "Reporter",
    "close_open_reporters",
    "fail_open_reporters",
    "make_reporter",
]
