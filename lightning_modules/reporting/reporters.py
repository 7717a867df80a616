"""What a training job tells its launcher, from global rank 0 only: the reporter protocol, the default
"json" reporter (RUN_DIR/result.json), and the bookkeeping that makes one reporter per job and reports
a failure even before training started."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from lightning_modules.contract import RESULT_FILE
from lightning_modules.training.distributed import is_global_zero

log = logging.getLogger("visionflow")


class Reporter(Protocol):
    """What the job tells its launcher. Only global rank 0 gets a real one (see `make_reporter`).

    The Dagster Pipes launcher will plug in a reporter that opens Pipes in `start` and reports
    metadata / asset checks in `finish`; other ranks must stay silent, so they get `NullReporter`.
    """

    def start(self, info: dict[str, Any]) -> None: ...
    def epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def finish(self, result: dict[str, Any]) -> None: ...
    def fail(self, exc: BaseException) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    def start(self, info: dict[str, Any]) -> None:
        pass

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def finish(self, result: dict[str, Any]) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


class JsonReporter(NullReporter):
    """Writes the final result to RUN_DIR/result.json (atomically: a rerun trusts this file)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RESULT_FILE

    def finish(self, result: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.replace(self.path)
        log.info("result written to %s", self.path)


# name -> factory(run_dir); VISIONFLOW_REPORTER picks one. "pipes" (Dagster Pipes, reporting/pipes.py)
# registers itself when lightning_modules.reporting is imported.
REPORTERS: dict[str, Any] = {"json": JsonReporter}
_open: list[Any] = []  # reporters made in this process and not closed yet (see fail_open_reporters)


def make_reporter(run_dir: Path, name: str | None = None) -> Reporter:
    """A real reporter on global rank 0, a silent one everywhere else.

    One per process: a second call returns the open one (Pipes may be opened only once).
    """
    if not is_global_zero():
        return NullReporter()
    name = name or os.environ.get("VISIONFLOW_REPORTER", "json")
    if name not in REPORTERS:
        raise ValueError(f"unknown reporter {name!r}; known: {', '.join(REPORTERS)}")
    key = (name, str(Path(run_dir).resolve()))
    for rep in list(_open):
        if rep._closed or rep.key != key:  # another job in this process (tests): that one is over
            _open.remove(rep)
            if not rep._closed:
                rep.close()
    if _open:
        return _open[0]
    reporter = _Tracked(REPORTERS[name](run_dir), key)
    _open.append(reporter)
    return reporter


class _Tracked:
    """Wraps a reporter so this module knows which job it belongs to and when it is closed."""

    def __init__(self, inner: Any, key: tuple[str, str]):
        self.inner = inner
        self.key = key
        self._closed = False

    def start(self, info: dict[str, Any]) -> None:
        self.inner.start(info)

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.inner.epoch(epoch, metrics)

    def finish(self, result: dict[str, Any]) -> None:
        self.inner.finish(result)

    def fail(self, exc: BaseException) -> None:
        self._closed = True
        getattr(self.inner, "fail", lambda e: None)(exc)

    def close(self) -> None:
        self._closed = True
        self.inner.close()


def fail_open_reporters(exc: BaseException, run_dir: Path | None = None) -> None:
    """Report a failure on global rank 0: through the open reporter, or one made for it (e.g. a config
    error before training started, so Dagster shows the job's error). Never raises."""
    if not is_global_zero():
        return
    try:
        reporters = [r for r in _open if not r._closed]
        if not reporters and run_dir is not None:
            reporters = [make_reporter(run_dir)]
        for rep in reporters:
            rep.fail(exc)
    except Exception as err:  # noqa: BLE001 - reporting must not hide the original error
        log.warning("could not report the failure: %s", err)
    finally:
        _open.clear()


def close_open_reporters() -> None:
    for rep in list(_open):
        if not rep._closed:
            rep.close()
    _open.clear()
