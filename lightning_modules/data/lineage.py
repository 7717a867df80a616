"""Which data a run really used: the version recorded in the prepared set's manifest.

A prep records `data_version`: the DVC md5 of its source when the source is DVC-tracked data, else
`content:<hash>` of what it prepared; and `content_hash`, which changes with any change of the prepared
images, labels, splits or settings. Runs, evaluations and the registry read the version from here,
never from the repository's `data.dvc` (which may describe other data than the run read).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

UNKNOWN = "unknown"


def content_hash(lines: Iterable[str]) -> str:
    """md5 over sorted lines describing a prepared set: any change of bytes, label, split or settings changes it."""
    h = hashlib.md5(usedforsecurity=False)
    for line in sorted(lines):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def data_version(source_data_version: str | None, content: str) -> str:
    """The version a prep records: the source's DVC md5 when known, else the prepared content's own hash."""
    return str(source_data_version) if source_data_version else f"content:{content[:16]}"


def _manifest(prepared: str | Path) -> dict:
    try:
        m = json.loads((Path(prepared) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def prepared_version(prepared: str | Path) -> str:
    """The data version of a prepared set (manifests from before `data_version`: their source's, else unknown)."""
    m = _manifest(prepared)
    return str(m.get("data_version") or m.get("source_data_version") or UNKNOWN)


def prepared_fingerprint(prepared: str | Path) -> str | None:
    """What identifies the prepared content itself: its content hash (None for manifests without one)."""
    m = _manifest(prepared)
    return m.get("content_hash") or None


def data_identity(prepared: str | Path) -> str | None:
    """What makes two prepared sets the same for reuse: the content hash, else (older manifests) the version."""
    version = prepared_version(prepared)
    return prepared_fingerprint(prepared) or (version if version != UNKNOWN else None)
