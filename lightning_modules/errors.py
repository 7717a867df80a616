"""Errors a user can act on: each names the file (or class) and the problem."""

from __future__ import annotations

from pathlib import Path


class VisionflowError(Exception):
    """Base class for errors caused by the user's input or config, not by a bug."""


class DataError(VisionflowError, ValueError):
    """Bad input data. The message always names the offending file, folder or class."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigError(VisionflowError, ValueError):
    """A bad configuration value; the message names the field and, when known, the file."""


class StoreLockedError(VisionflowError):
    """MLflow's SQLite store stayed locked by another process: SQLite serves one writer at a time."""

    MESSAGE = (
        "MLflow's SQLite store is locked by another run: use Postgres for concurrent runs "
        "(VISIONFLOW_STORAGE=postgres, see README)"
    )

    def __init__(self, where: str = ""):
        super().__init__(f"{self.MESSAGE}{f' [{where}]' if where else ''}")
