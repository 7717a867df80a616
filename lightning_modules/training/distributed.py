"""Rank helpers for jobs started by torchrun (or not): who is global rank 0, threads per rank, the
effective batch and the scaled learning rate. (What rank 0 reports lives in `reporting/`.)

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE / GROUP_RANK; Lightning's own
launcher sets only LOCAL_RANK / NODE_RANK. `global_rank()` handles both, because only global
rank 0 may talk to the outside world (MLflow, result.json and, later, Dagster Pipes: every rank
inherits the Pipes environment, and a second rank opening Pipes fails the Dagster step).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

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
    import torch  # lazy: Dagster and the CLIs load this module torch-free

    n = threads_per_rank(local_world_size)
    torch.set_num_threads(n)
    return n


def effective_batch(batch_size: int, devices: int = 1, num_nodes: int = 1, accumulate: int = 1) -> int:
    """Samples per optimizer step across the whole job."""
    return batch_size * devices * num_nodes * accumulate


def scaled_lr(lr: float, effective: int, reference_batch: int | None) -> float:
    """Linear scaling rule: lr is given for `reference_batch`; None leaves it as is."""
    return lr if not reference_batch else lr * effective / reference_batch


def world_dict(info: WorldInfo | None = None) -> dict[str, Any]:
    return asdict(info or world_info())
