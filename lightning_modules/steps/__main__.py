"""`python -m lightning_modules.steps NAME SPEC.json`: run one step and report it (see steps/__init__.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lightning_modules.config_messages import first_error
from lightning_modules.errors import ConfigError, VisionflowError
from lightning_modules.reporting.progress import log_to_stderr
from lightning_modules.steps.specs import StepSpec

ERROR_FILE = "step_error.txt"


def _steps() -> dict[str, tuple[type[StepSpec], Callable[[Any], Any]]]:
    # lazy: `--help` and a bad name answer without importing torch
    from lightning_modules.steps import evaluation, prep, search, specs, study, transfer

    return {
        "prep_classification": (specs.ClassificationPrepSpec, prep.classification),
        "prep_detection": (specs.DetectionPrepSpec, prep.detection),
        "hparam_search": (specs.SearchSpec, search.hparam_search),
        "study": (specs.StudySpec, study.study),
        "classification_evaluation": (specs.ClassificationEvaluationSpec, evaluation.classification),
        "detection_evaluation": (specs.DetectionEvaluationSpec, evaluation.detection),
        "transfer_report": (specs.TransferReportSpec, transfer.transfer_report),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.steps", description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(_steps()))
    p.add_argument("spec", type=Path, help="the step's spec as JSON (written by the Dagster asset)")
    args = p.parse_args(argv)
    spec_cls, step = _steps()[args.name]
    if os.environ.get("VISIONFLOW_CONSOLE") == "compact":  # `make run`: the terminal shows a summary instead
        _output_to(args.spec.parent / f"{args.name}.log")
    log_to_stderr()  # long steps (prep, search) log their progress; Dagster keeps it in the compute logs
    try:
        with _pipes() as pipes:  # an exception inside reaches Dagster through Pipes, with its message
            spec = _read_spec(spec_cls, args.spec)
            step(spec).emit(spec.out_dir, pipes)
    except VisionflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        # beside the spec, where the launcher reads it into the step's failure (also on a shared volume)
        (args.spec.parent / ERROR_FILE).write_text(str(exc))
        return 2
    return 0


def _output_to(path: Path) -> None:
    """This process's stdout and stderr (Python's and any library's) into `path`, appended."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _read_spec(spec_cls: type[StepSpec], path: Path) -> StepSpec:
    """The spec file as its model; a malformed one (another version's asset wrote it?) names the field."""
    try:
        return spec_cls.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:  # ValidationError and JSONDecodeError are ValueErrors
        why = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(f"{path}: not a valid {spec_cls.__name__} ({why})") from None


@contextmanager
def _pipes() -> Iterator[Any]:
    """Dagster's Pipes context when Dagster launched this step (VISIONFLOW_REPORTER=pipes), else None."""
    if os.environ.get("VISIONFLOW_REPORTER") != "pipes":
        yield None
        return
    from dagster_pipes import open_dagster_pipes  # lazy: only a step Dagster launched speaks Pipes

    with open_dagster_pipes() as pipes:
        forward = _ToPipes(pipes)
        logging.getLogger("visionflow").addHandler(forward)  # progress lines into the Dagster run's log
        try:
            yield pipes
        finally:
            logging.getLogger("visionflow").removeHandler(forward)


class _ToPipes(logging.Handler):
    def __init__(self, pipes: Any) -> None:
        super().__init__(logging.INFO)
        self.pipes = pipes

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "info"
        getattr(self.pipes.log, level)(record.getMessage())


if __name__ == "__main__":
    sys.exit(main())
