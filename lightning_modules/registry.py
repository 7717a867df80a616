"""The MLflow model registry: register a challenger, promote it to `champion` only if it is better.

"Better" is judged on the same data version: when the champion was scored on other data, it is
scored again on the challenger's test split (`rescore`) before the two are compared. Every
decision is recorded as tags on the challenger's model version, including why it was not promoted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

ALIAS = "champion"
SCORE_TAG = "test_acc1"


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


def log_and_register(uri: str, run_id: str, model, name: str, input_example=None) -> str:
    """Log the torch model into the run and register it; returns the new version number.

    Pickle format: the loaded model is the same nn.Module class (pt2, MLflow's other format, is a
    traced graph). `input_example` (a numpy batch) records the input signature.
    """
    import mlflow
    import torch
    import torchvision

    mlflow.set_tracking_uri(uri)
    # Explicit requirements: MLflow's inference of them imports and scans the environment (slow).
    # Loading the pickled model also needs visionflow itself installed (its model classes).
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                        input_example=input_example, pip_requirements=requirements)
    return str(mlflow.register_model(info.model_uri, name).version)


def champion(uri: str, name: str):
    """The current champion's ModelVersion, or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(uri).get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def decide_and_promote(uri: str, name: str, version: str, *, score: float, data_version: str,
                       rescore: Callable[[str], float], gates_passed: bool = True,
                       score_tag: str = SCORE_TAG) -> Decision:
    """Move `champion` to `version` if it beats the current champion on `data_version`'s test split.

    rescore(model_uri) -> score of another model on the challenger's test split.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    client.set_model_version_tag(name, version, "data_version", data_version)
    client.set_model_version_tag(name, version, score_tag, repr(float(score)))  # full precision: ties stay ties
    current = champion(uri, name)
    if not gates_passed:
        decision = Decision(False, version, "quality gates failed", score,
                            str(current.version) if current else None)
    elif current is None:
        decision = Decision(True, version, "no champion yet", score)
    else:
        same_data = current.tags.get("data_version") == data_version
        champ_score = float(current.tags[score_tag]) if same_data and score_tag in current.tags \
            else rescore(f"models:/{name}/{current.version}")
        how = "same data version" if same_data else f"champion re-scored on data {data_version}"
        if score > champ_score:
            decision = Decision(True, version, f"beats champion v{current.version} ({score:.4f} > {champ_score:.4f}, {how})",
                                score, str(current.version), champ_score)
        else:
            decision = Decision(False, version, f"does not beat champion v{current.version} ({score:.4f} <= {champ_score:.4f}, {how})",
                                score, str(current.version), champ_score)
    if decision.promoted:
        client.set_registered_model_alias(name, ALIAS, version)
    client.set_model_version_tag(name, version, "promotion", decision.reason)
    return decision
