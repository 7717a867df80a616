"""Staying inside the dataset: path checks against the dataset root and symlink-safe image listing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning_modules.data.detection_readers.common import IMAGE_SUFFIXES, Rejection
from lightning_modules.data.files import inside

log = logging.getLogger("visionflow")


def is_within(path: str, root: str) -> bool:
    return Path(path).is_relative_to(root)


def outside_root(path: Path, root: Path) -> str | None:
    """Why `path` must not be read as part of the dataset at `root`, or None when it may.

    Checked twice: on the path as written (`../`, absolute paths), then on its real path, so that a
    symlink inside the dataset cannot point the prep at files elsewhere on the machine.
    """
    if not is_within(os.path.abspath(path), os.path.abspath(root)):
        return f"leaves the dataset root {root}"
    real = os.path.realpath(path)
    if not inside(path, root):  # (links into the DVC cache of the repository are the data itself)
        return f"is a symlink to {real}, outside the dataset root {root}"
    return None


def list_images(folder: Path, root: Path) -> tuple[list[Path], list[Rejection]]:
    """Image files under `folder`, following symlinked folders only while they stay inside `root`.

    A symlinked folder leading out of the root is reported and not read; one leading to a folder already
    listed (a loop such as `sub/up -> ..`, or a second link to the same folder) is skipped with a warning.
    Symlinked files are listed as they are: the per-image root check rejects those that lead out.
    """
    found: list[Path] = []
    problems: list[Rejection] = []
    listed = {os.path.realpath(folder)}

    def unreadable(e: OSError) -> None:  # os.walk would otherwise skip an unreadable folder without a word
        problems.append(Rejection(str(e.filename), None, f"folder not readable, its images not listed: {e}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath) / d
            real = os.path.realpath(full)
            if not inside(full, root):
                problems.append(
                    Rejection(str(full), None, f"symlinked folder to {real}, outside the dataset root {root}: not read")
                )
            elif real in listed:
                log.warning("skipping %s: it leads to %s, already listed (a symlink loop or a second link)", full, real)
            else:
                listed.add(real)
                keep.append(d)
        dirnames[:] = keep  # os.walk descends only into what is left here
        found += [Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found), problems
