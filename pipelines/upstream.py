"""Which upstream materialization an asset builds on: the chain's lineage, made explicit.

An asset reads its upstream *from the same Dagster run* when that run materialized it (the `main` and
`detection` jobs run the whole chain in one run), else the latest materialization *of the same
partition* (re-evaluating a model trained earlier). Never "the latest of any run and any partition":
that would tie an evaluation to whichever transfer run happened to finish last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

# How far back to look for this run's own record; a run materializes one asset partition once
# (retries included), so its record is among the newest few of that partition.
_RECENT = 20


@dataclass(frozen=True)
class Upstream:
    """One upstream materialization: its metadata values and the Dagster run that made it."""

    key: dg.AssetKey
    partition: str | None
    run_id: str
    same_run: bool
    metadata: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        if name not in self.metadata:
            raise dg.Failure(f"{self.describe()} has no metadata {name!r}: materialize it again with this version")
        return self.metadata[name]

    def describe(self) -> str:
        part = f"[{self.partition}]" if self.partition else ""
        where = "this run" if self.same_run else f"run {self.run_id[:8]}"
        return f"{self.key.to_user_string()}{part} from {where}"

    def lineage_metadata(self) -> dict[str, dg.MetadataValue]:
        """What the downstream records, so its page says exactly which upstream it used."""
        name = self.key.to_user_string()
        return {f"upstream_{name}_run": dg.MetadataValue.text(self.run_id)}


def upstream(context: dg.AssetExecutionContext, key: dg.AssetKey, partition: str | None = None) -> Upstream:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=_RECENT
    ).records
    if not records:
        part = f"[{partition}]" if partition else ""
        raise dg.Failure(f"{key.to_user_string()}{part} was never materialized: materialize it first")
    mine = [r for r in records if r.run_id == context.run_id]
    record = (mine or records)[0]  # newest first
    event = record.asset_materialization
    assert event is not None  # a materialization record always carries one
    found = Upstream(
        key=key,
        partition=partition,
        run_id=record.run_id,
        same_run=bool(mine),
        metadata={k: v.value for k, v in event.metadata.items()},
    )
    context.log.info(f"building on {found.describe()}")
    return found
