"""The study registry: a study's name (as the CLI, the configs and the Dagster assets say it) -> its Study."""

from __future__ import annotations

from lightning_modules.errors import ConfigError
from lightning_modules.studies import activations, batch_lr, degradation, dropout, epochs, vanishing
from lightning_modules.studies.base import Study

STUDIES: dict[str, Study] = {
    s.name: s
    for s in (vanishing.STUDY, degradation.STUDY, dropout.STUDY, batch_lr.STUDY, epochs.STUDY, activations.STUDY)
}


def get_study(name: str) -> Study:
    try:
        return STUDIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"study {name!r} is unknown; choose one of: {', '.join(STUDIES)}") from None
