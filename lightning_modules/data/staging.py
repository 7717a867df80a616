"""Build an output folder beside its final place, then swap it in: a failed run never harms a good output."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("visionflow")


def staging_dir(out: Path) -> Path:
    """The staging folder for `out`: a hidden sibling, so the final rename stays on one filesystem."""
    return out.parent / f".{out.name}.staging-{os.getpid()}"


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out`, on any error it is removed.

    >>> with staged_output(Path("prepared/imagenet")) as tmp:
    ...     (tmp / "manifest.json").write_text("{}")
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = staging_dir(out)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, out)


def swap_in(staging: Path, out: Path) -> None:
    """Replace `out` by `staging` with two renames; the old output is deleted only once the new one is in place."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    had_old = out.exists()
    if had_old:
        if old.exists():
            shutil.rmtree(old)
        os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        if had_old:
            os.rename(old, out)  # put the previous good output back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Delete staging/old folders left by runs whose process is gone (killed, power loss)."""
    for prefix in (f".{out.name}.staging-", f".{out.name}.old-"):
        for path in sorted(out.parent.glob(prefix + "*")):
            pid = path.name[len(prefix) :]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            if prefix.endswith(".old-") and not out.exists():
                # A run died between its two renames: this is the last good output, restore it.
                log.warning("restoring %s from %s", out, path)
                os.rename(path, out)
            else:
                log.info("removing stale %s", path)
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
