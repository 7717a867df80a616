"""How a step reports: metadata and check results, through Pipes when Dagster launched it, and to a file."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_FILE = "step_result.json"


def image(path: str | Path, alt: str) -> dict[str, Any]:
    """A PNG shown inline on the asset's page (Dagster renders markdown images from data URLs)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"raw_value": f"![{alt}](data:image/png;base64,{data})", "type": "md"}


def typed(value: Any, kind: str) -> dict[str, Any]:
    return {"raw_value": value, "type": kind}


def plain(value: Any) -> Any:
    """Plain values pass as they are (Pipes infers bool, int, float, str); lists and dicts as JSON."""
    return typed(value, "json") if isinstance(value, (list, dict)) else value


@dataclass
class Check:
    name: str
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    severity: str = "ERROR"  # or "WARN": shown, but does not block what is downstream


def markdown_table(rows: list[dict[str, Any]], columns: list[str], limit: int = 50) -> dict[str, Any]:
    """A markdown table of the first `limit` rows (e.g. rejected files with their reasons)."""
    if not rows:
        return typed("_none_", "md")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    if len(rows) > limit:
        lines.append(f"\n... and {len(rows) - limit} more (see manifest.json)")
    return typed("\n".join(lines), "md")


@dataclass
class StepReport:
    metadata: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    message: str = ""  # one line for the run's log (e.g. what was promoted and why)
    data_version: str | None = None  # the asset's data version (a prep: its content hash)

    def emit(self, out: Path, pipes: Any | None = None) -> None:
        """OUT/step_result.json; and, launched by Dagster, the same through its Pipes context."""
        out.mkdir(parents=True, exist_ok=True)
        doc = {
            "metadata": _readable(self.metadata),
            "checks": [c.__dict__ for c in self.checks],
            "data_version": self.data_version,
        }
        (out / RESULT_FILE).write_text(json.dumps(doc, indent=1, default=str))
        if pipes is None:
            return
        if self.message:
            pipes.log.info(self.message)
        for check in self.checks:
            pipes.report_asset_check(check.name, passed=check.passed, severity=check.severity, metadata=check.metadata)
        pipes.report_asset_materialization(metadata=self.metadata, data_version=self.data_version)


def _readable(metadata: dict[str, Any]) -> dict[str, Any]:
    """The file keeps values, not inline images."""
    out = {}
    for k, v in metadata.items():
        if isinstance(v, dict) and v.get("type") == "md" and str(v.get("raw_value", "")).startswith("!["):
            continue
        out[k] = v["raw_value"] if isinstance(v, dict) and "raw_value" in v else v
    return out
