"""Quality gates on prepared data: their names, declared on the assets. The prep steps compute them from
each prep's manifest (lightning_modules/steps/prep.py) and report them through Pipes.

All are blocking but the rejected-share warnings: a failed check stops everything downstream (no
training on broken data).
"""

from __future__ import annotations

import dagster as dg

CLASSIFICATION_CHECKS = ("no_empty_class", "rejected_under_limit", "mean_std_finite")
DETECTION_CHECKS = ("anchors_bpr", "detection_rejected_under_limit")


def specs(asset_name: str, names: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(n, asset=asset_name, blocking=True) for n in names]
