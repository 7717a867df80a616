"""The official Darknet cfg files this package ships (unchanged copies; provenance and licence in README.md)."""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """Bundled cfgs as paths relative to DIR, e.g. "yolov3.cfg", "alexeyab/yolov3.cfg"."""
    return sorted(p.relative_to(DIR).as_posix() for p in DIR.rglob("*.cfg"))


def path(name: str) -> Path:
    """The bundled cfg `name` ("yolov3" or "yolov3.cfg", "alexeyab/yolov3.cfg"); FileNotFoundError if not bundled."""
    rel = name if name.endswith(".cfg") else f"{name}.cfg"
    p = DIR / rel
    if rel not in names():
        raise FileNotFoundError(f"no bundled Darknet cfg {name!r}; bundled: {', '.join(names())}")
    return p
