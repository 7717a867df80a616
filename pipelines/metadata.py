"""Turning files and numbers into metadata the Dagster UI shows (images inline as markdown)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg


def image(path: Path, alt: str = "image") -> dg.MarkdownMetadataValue:
    """A PNG shown inline in the asset's page (Dagster renders markdown images from data URLs)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def bar_chart(labels: list[str], values: list[int], title: str) -> dg.MetadataValue:
    """A small bar chart (e.g. images per class) as an inline image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * len(labels), 12), 3), dpi=80)
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_title(title)
    if len(labels) <= 40:
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")


def table(rows: list[dict], columns: list[str], limit: int = 50) -> dg.MetadataValue:
    """A markdown table of the first `limit` rows (e.g. rejected files with their reasons)."""
    if not rows:
        return dg.MetadataValue.md("_none_")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    if len(rows) > limit:
        lines.append(f"\n... and {len(rows) - limit} more (see manifest.json)")
    return dg.MetadataValue.md("\n".join(lines))
