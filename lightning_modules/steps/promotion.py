"""Register a model version and move `champion` only when it is better: one flow for classifier and detector."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning_modules import tracking
from lightning_modules.data.lineage import data_identity, prepared_version
from lightning_modules.errors import VisionflowError
from lightning_modules.tracking import model_registry as registry
from lightning_modules.tracking.bootstrap import Interval

log = logging.getLogger("visionflow")


@dataclass(frozen=True)
class Promotion:
    version: str
    decision: registry.Decision
    onnx: str  # the export's parity ("max_abs_diff 2e-06 on 16 test images") or why there is none


def export_onnx(checkpoint: str, data: Path, folder: Path) -> tuple[Path | None, str]:
    """The ONNX export that goes into the registered version, checked on `data`'s test images.

    A failed export does not stop the registration (the checkpoint is what promotion scores): the
    version is tagged with the reason instead."""
    from lightning_modules.export.onnx_export import export  # lazy: torch, onnx; every step loads this module

    try:
        doc = export(checkpoint, folder, data=data)
    except VisionflowError as exc:
        log.warning("ONNX export of %s failed: %s", checkpoint, exc)
        return None, f"export failed: {str(exc)[:300]}"
    p = doc["parity"]
    return folder, f"max_abs_diff {p['max_abs_diff']:.1e} on {p['images']} {p['split']} images"


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
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir, onnx = export_onnx(checkpoint, data, Path(tmp) / "onnx")
        number = registry.log_and_register(
            uri, run_id, checkpoint, name, kind=kind, spec={**spec, "data_version": version}, extra=onnx_dir
        )
    registry.tag_version(
        uri, name, number, {"onnx": f"{registry.MODEL_DIR}/model.onnx" if onnx_dir else "none", "onnx_parity": onnx}
    )
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
    return Promotion(number, decision, onnx)


def finish(uri: str, run_id: str) -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; every step loads this module

    MlflowClient(uri).set_terminated(run_id)
