"""Register a model version and move `champion` only when it is better: one flow for classifier and detector."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning_modules import tracking
from lightning_modules.data.lineage import data_identity, prepared_version
from lightning_modules.tracking import model_registry as registry
from lightning_modules.tracking.bootstrap import Interval


@dataclass(frozen=True)
class Promotion:
    version: str
    decision: registry.Decision


def register_and_promote(
    uri: str,
    run_id: str,
    *,
    checkpoint: str,
    name: str,
    kind: str,
    data: Path,
    score: float,
    score_tag: str,
    gates_passed: bool,
    spec: dict,
    compare: Callable[[Path], Interval],
) -> Promotion:
    """Register `checkpoint` (weights + settings, no pickle) and decide on `champion`.

    compare(champion's model.ckpt) scores the champion on this step's test images and returns the paired
    bootstrap interval of (this model - champion); `champion` moves only when it lies above zero."""
    version = prepared_version(data)
    number = registry.log_and_register(uri, run_id, checkpoint, name, kind=kind, spec={**spec, "data_version": version})
    decision = registry.decide_and_promote(
        uri,
        name,
        number,
        score=score,
        data_version=version,
        scored_on=data_identity(data) or version,
        compare=lambda model_uri: compare(registry.download(uri, model_uri, kind=kind)),
        gates_passed=gates_passed,
        score_tag=score_tag,
    )
    tracking.set_tag(uri, run_id, "promotion", decision.reason)
    return Promotion(number, decision)


def finish(uri: str, run_id: str) -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; every step loads this module

    MlflowClient(uri).set_terminated(run_id)
