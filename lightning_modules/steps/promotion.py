"""Register a model version and move `champion` only when it is better: one flow for classifier and detector."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning_modules import tracking
from lightning_modules.data.lineage import data_identity, prepared_version
from lightning_modules.tracking import model_registry as registry


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
    rescore: Callable[[Path], float],
) -> Promotion:
    """Register `checkpoint` (weights + settings, no pickle) and decide on `champion`.

    rescore(model.ckpt path) scores another version on this step's test data; it is only called when
    the champion was scored on other data (registry.decide_and_promote)."""
    version = prepared_version(data)
    number = registry.log_and_register(uri, run_id, checkpoint, name, kind=kind, spec={**spec, "data_version": version})
    decision = registry.decide_and_promote(
        uri,
        name,
        number,
        score=score,
        data_version=version,
        scored_on=data_identity(data) or version,
        rescore=lambda model_uri: rescore(registry.download(uri, model_uri, kind=kind)),
        gates_passed=gates_passed,
        score_tag=score_tag,
    )
    tracking.set_tag(uri, run_id, "promotion", decision.reason)
    return Promotion(number, decision)


def finish(uri: str, run_id: str) -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; every step loads this module

    MlflowClient(uri).set_terminated(run_id)
