"""Listing a source's files safely: symlinks never lead out of the source, and never in circles.

torchvision's ImageFolder (os.walk with followlinks=True) follows a link to a parent folder round and
round (30 images became 1,230) and reads whatever a link points to. Here a linked folder or file is
used only when its real path stays inside the source root; a folder met twice is skipped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("visionflow")


@dataclass
class Listing:
    files: list[str] = field(default_factory=list)
    # (path, reason): links refused because they leave the source, loops skipped
    refused: list[tuple[str, str]] = field(default_factory=list)


def inside(path: str | Path, root: Path) -> bool:
    """True when `path`'s real location (links resolved) lies under `root`, or in the DVC cache of the
    repository holding `root` (DVC's `cache.type symlink` turns tracked files into links there)."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(r) for r in _allowed(Path(os.path.realpath(root))))


def _allowed(root: Path) -> list[Path]:
    for folder in (root, *root.parents):
        if (folder / ".dvc").is_dir():
            return [root, Path(os.path.realpath(folder / ".dvc" / "cache"))]
    return [root]


def walk_files(folder: Path, root: Path, keep=lambda name: True) -> Listing:
    """Every file under `folder` (sorted, hidden folders skipped) whose real path stays under `root`."""
    out = Listing()
    seen: set[str] = set()
    _walk(Path(folder), Path(os.path.realpath(root)), keep, out, seen)
    return out


def _walk(folder: Path, root: Path, keep, out: Listing, seen: set[str]) -> None:
    real = os.path.realpath(folder)
    if real in seen:
        out.refused.append((str(folder), f"symlink loop: {real} was already listed; skipped"))
        log.warning("%s: symlink loop (%s already listed), skipped", folder, real)
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        out.refused.append((str(folder), f"cannot list folder: {exc.strerror or exc}"))
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink() and not inside(path, root):
            target = os.path.realpath(path)
            out.refused.append(
                (
                    str(path),
                    f"symlink to {target}, outside the source {root}: not followed "
                    "(copy the data in, or prepare its real folder)",
                )
            )
            continue
        if entry.is_dir():
            if not entry.name.startswith("."):
                _walk(path, root, keep, out, seen)
        elif entry.is_file() and keep(entry.name):
            out.files.append(str(path))
