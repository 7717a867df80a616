"""Turning files and numbers into metadata the Dagster UI shows (images inline as markdown)."""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg


def image(path: Path, alt: str = "image") -> dg.MarkdownMetadataValue:
    """A PNG shown inline in the asset's page (Dagster renders markdown images from data URLs)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")
