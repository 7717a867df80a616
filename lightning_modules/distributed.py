"""Rank helpers for jobs started by torchrun (or not), and the job's result reporter.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE / GROUP_RANK; Lightning's own
launcher sets only LOCAL_RANK / NODE_RANK. `global_rank()` handles both, because only global
rank 0 may talk to the outside world (MLflow, result.json and, later, Dagster Pipes: every rank
inherits the Pipes environment, and a second rank opening Pipes fails the Dagster step).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from lightning_modules.contract import RESULT_FILE

log = logging.getLogger("visionflow")


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return int(value)


@dataclass(frozen=True)
class WorldInfo:
    """Where this process sits in the job; `torchrun` is True when torchrun started it."""

    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    local_world_size: int
    num_nodes: int
    torchrun: bool


def under_torchrun() -> bool:
    """True in a process started by torchrun (it sets TORCHELASTIC_RUN_ID and WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and ("TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ)


def global_rank() -> int:
    """RANK when set (torchrun); else NODE_RANK x local world size + LOCAL_RANK; else 0."""
    rank = _env_int("RANK")
    if rank is not None:
        return rank
    local = _env_int("LOCAL_RANK", 0) or 0
    node = _env_int("NODE_RANK", _env_int("GROUP_RANK", 0)) or 0
    if node == 0:
        return local
    per_node = _env_int("LOCAL_WORLD_SIZE")
    if per_node is None:
        world, nodes = _env_int("WORLD_SIZE"), _env_int("NUM_NODES")
        per_node = world // nodes if world and nodes else None
    # Without a per-node count we still know this is not global rank 0.
    return node * per_node + local if per_node else max(1, node)


def is_global_zero() -> bool:
    return global_rank() == 0


def world_info() -> WorldInfo:
    world = _env_int("WORLD_SIZE", 1) or 1
    local_world = _env_int("LOCAL_WORLD_SIZE", None) or world
    return WorldInfo(
        rank=global_rank(),
        local_rank=_env_int("LOCAL_RANK", 0) or 0,
        node_rank=_env_int("GROUP_RANK", _env_int("NODE_RANK", 0)) or 0,
        world_size=world,
        local_world_size=local_world,
        num_nodes=max(1, world // max(1, local_world)),
        torchrun=under_torchrun(),
    )


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_rank(local_world_size: int | None = None) -> int:
    """Cores / ranks on this node (VISIONFLOW_THREADS overrides, e.g. for simulated nodes on one machine)."""
    override = _env_int("VISIONFLOW_THREADS")
    if override:
        return override
    local = local_world_size or world_info().local_world_size
    return max(1, cpu_count() // max(1, local))


def set_threads(local_world_size: int | None = None) -> int:
    """Give each rank its share of the cores: ranks that each take all cores run ~3x slower."""
    import torch

    n = threads_per_rank(local_world_size)
    torch.set_num_threads(n)
    return n


def effective_batch(batch_size: int, devices: int = 1, num_nodes: int = 1, accumulate: int = 1) -> int:
    """Samples per optimizer step across the whole job."""
    return batch_size * devices * num_nodes * accumulate


def scaled_lr(lr: float, effective: int, reference_batch: int | None) -> float:
    """Linear scaling rule: lr is given for `reference_batch`; None leaves it as is."""
    return lr if not reference_batch else lr * effective / reference_batch


# -- reporting ------------------------------------------------------------------------------------


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


def _pipes_reporter(run_dir: Path) -> Reporter:
    # Imported here: dagster_pipes is only needed when Dagster launched the job.
    from lightning_modules.pipes_reporter import PipesReporter

    return PipesReporter(run_dir)


# name -> factory(run_dir); VISIONFLOW_REPORTER picks one ("pipes": Dagster Pipes, see pipes_reporter.py).
REPORTERS: dict[str, Any] = {"json": JsonReporter, "pipes": _pipes_reporter}
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


def world_dict(info: WorldInfo | None = None) -> dict[str, Any]:
    return asdict(info or world_info())
