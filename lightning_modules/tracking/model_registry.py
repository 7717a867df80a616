"""The MLflow model registry: register a challenger, promote it to `champion` only if it is better.

"Better" is judged on the same data version: when the champion was scored on other data, it is
scored again on the challenger's test split (`rescore`) before the two are compared. Every
decision is recorded as tags on the challenger's model version, including why it was not promoted.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lightning_modules.errors import DataError
from lightning_modules.tracking.bootstrap import Interval

ALIAS = "champion"
SCORE_TAG = "test_acc1"


class IncomparableChampion(Exception):
    """The champion cannot be scored on the challenger's test set (it predicts other classes): the task changed."""


@dataclass(frozen=True)
class Decision:
    promoted: bool
    version: str
    reason: str
    challenger_score: float
    champion_version: str | None = None
    champion_score: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


MODEL_DIR = "model"  # the run's artifact folder a registered version points to
MODEL_FILE, SPEC_FILE = "model.ckpt", "model.json"
FORMAT = "visionflow-checkpoint/1"


def log_and_register(
    uri: str,
    run_id: str,
    checkpoint: str | Path,
    name: str,
    *,
    kind: str,
    spec: dict | None = None,
    extra: Path | None = None,
) -> str:
    """Store a checkpoint's weights and settings in the run and register them; returns the new version number.

    No pickle: the version holds `model.ckpt` (only `hyper_parameters` and `state_dict`, loadable with
    `weights_only=True`) and `model.json` (format, kind, input spec); our own code rebuilds the network
    from them (`evaluate.load_classifier`, `detection.evaluation.load_predictor`). A registry artifact
    swapped for a booby-trapped file is refused when loaded, never executed. `extra`: a folder whose files
    go beside them (the ONNX export: model.onnx, export.json).
    """
    import torch  # lazy: torch; every step loads this module
    from mlflow.exceptions import MlflowException  # lazy: mlflow is ~1 s to import; every step loads this module
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; every step loads this module

    from lightning_modules.training.checkpoints import load_checkpoint  # lazy: torch; every step loads this module

    blob = load_checkpoint(checkpoint)
    client = MlflowClient(uri)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(
            {"hyper_parameters": blob.get("hyper_parameters"), "state_dict": blob.get("state_dict")},
            Path(tmp) / MODEL_FILE,
        )
        doc = {"format": FORMAT, "kind": kind, "checkpoint": str(checkpoint), **(spec or {})}
        (Path(tmp) / SPEC_FILE).write_text(json.dumps(doc, indent=1, default=str))
        for f in sorted(extra.iterdir()) if extra else []:
            shutil.copy2(f, Path(tmp) / f.name)
        client.log_artifacts(run_id, tmp, MODEL_DIR)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_DIR}"
    return str(client.create_model_version(name, source=source, run_id=run_id).version)


def download(uri: str, model_uri: str, kind: str | None = None) -> Path:
    """The local `model.ckpt` of a registered version (`models:/name/3`, `models:/name@champion`).

    DataError when the version is not in our format (e.g. registered by another tool) or of another kind.
    """
    import mlflow  # lazy: mlflow is ~1 s to import; every step loads this module
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; every step loads this module

    client = MlflowClient(uri)  # this store's registry, whatever the process-wide MLflow settings are
    name, sep, rest = model_uri.removeprefix("models:/").partition("/")
    if sep:
        version = rest
    else:
        name, _, alias = name.partition("@")
        version = client.get_model_version_by_alias(name, alias).version
    source = client.get_model_version_download_uri(name, str(version))
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri))
    try:
        doc = json.loads((folder / SPEC_FILE).read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(folder, f"{model_uri} is not a visionflow model (no {SPEC_FILE} with format {FORMAT})")
    if kind is not None and doc.get("kind") != kind:
        raise DataError(folder, f"{model_uri} is a {doc.get('kind')}, not a {kind}")
    return folder / MODEL_FILE


def tag_version(uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; every step loads this module

    client = MlflowClient(uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def champion(uri: str, name: str):
    """The current champion's ModelVersion, or None."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow is ~1 s to import; every step loads this module
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; every step loads this module

    try:
        return MlflowClient(uri).get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def decide_and_promote(
    uri: str,
    name: str,
    version: str,
    *,
    score: float,
    data_version: str,
    compare: Callable[[str], Interval],
    gates_passed: bool = True,
    score_tag: str = SCORE_TAG,
    scored_on: str | None = None,
) -> Decision:
    """Move `champion` to `version` only if it is better than the current champion beyond doubt.

    compare(champion_model_uri) scores the champion again on this step's test images and returns the
    paired bootstrap interval of (this version - champion) over those images: the challenger wins only
    when the whole 95% interval lies above zero; it raises IncomparableChampion when the champion predicts
    other classes than the test set has (the data's classes changed), and the challenger replaces it.
    data_version: the lineage of the data (tagged); scored_on: what identifies the exact test set (the
    prepared set's content hash), tagged with the score.
    """
    from mlflow.tracking import MlflowClient  # lazy: mlflow is ~1 s to import; every step loads this module

    scored_on = scored_on or data_version
    client = MlflowClient(uri)
    client.set_model_version_tag(name, version, "data_version", data_version)
    client.set_model_version_tag(name, version, "scored_on", scored_on)
    client.set_model_version_tag(name, version, score_tag, repr(float(score)))  # full precision: ties stay ties
    current = champion(uri, name)
    if not gates_passed:
        decision = Decision(False, version, "quality gates failed", score, str(current.version) if current else None)
    elif current is None:
        decision = Decision(True, version, "no champion yet", score)
    else:
        try:
            interval = compare(f"models:/{name}/{current.version}")
        except IncomparableChampion as why:
            # Nothing to compare against on this task: the challenger (its gates passed) takes over.
            decision = Decision(
                True,
                version,
                f"replaces champion v{current.version}, made for another task: {why}",
                score,
                str(current.version),
            )
            client.set_registered_model_alias(name, ALIAS, version)
            client.set_model_version_tag(name, version, "promotion", decision.reason)
            return decision
        client.set_model_version_tag(name, version, "promotion_interval", f"[{interval.low:.6f}, {interval.high:.6f}]")
        verdict = "beats" if interval.better else "is not shown better than"
        decision = Decision(
            interval.better,
            version,
            f"{verdict} champion v{current.version} on the same test images: {interval.describe()}",
            score,
            str(current.version),
            interval.champion,
        )
    if decision.promoted:
        client.set_registered_model_alias(name, ALIAS, version)
    client.set_model_version_tag(name, version, "promotion", decision.reason)
    return decision
