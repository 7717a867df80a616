"""Build an output folder beside its final place, then swap it in: a failed run never harms a good output.

Safety rules (a prep must never destroy what it did not make):
- the output may not be, contain or sit inside the source it is made from;
- an existing output is replaced only when it is ours (by default: a prep manifest of ours, or empty);
- one prep at a time per output: an exclusive lock is held for the whole build; a second prep into
  the same folder fails at once with a message naming the holder, instead of both "succeeding".
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_modules.errors import DataError

log = logging.getLogger("visionflow")

PRODUCER = "visionflow-prep"  # the manifest's "producer": outputs we may replace
STAGING_MARK = ".visionflow-staging"  # inside our staging folders: only those are ever cleaned up


def staging_dir(out: Path) -> Path:
    """The staging folder for `out`: a hidden sibling, so the final rename stays on one filesystem."""
    return out.parent / f".{out.name}.staging-{os.getpid()}"


def is_prep_output(path: Path) -> bool:
    """True for a folder a visionflow prep made (its manifest says so) or an empty folder."""
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    # Manifests written before "producer" existed: kind + creation time, as only our preps write them.
    legacy = manifest.get("kind") in ("classification", "detection") and "created" in manifest
    return manifest.get("producer") == PRODUCER or legacy


def check_not_overlapping(source: Path, out: Path) -> None:
    """Refuse an output that equals, contains or sits inside its source: the swap would delete the source."""
    src, dst = Path(source).resolve(), Path(out).resolve()
    if src == dst:
        raise DataError(
            out,
            "the output folder is the source folder itself; choose another output folder "
            "(a prep replaces its output, which would delete the source)",
        )
    if src.is_relative_to(dst):
        raise DataError(
            out,
            f"the output folder contains the source {source}; choose an output folder "
            "outside it (replacing the output would delete the source)",
        )
    if dst.is_relative_to(src):
        raise DataError(
            out,
            f"the output folder is inside the source {source}; choose an output folder "
            "outside it (the prep would read its own output as data)",
        )


@contextmanager
def staged_output(
    out: Path, *, source: Path | None = None, may_replace: Callable[[Path], bool] = is_prep_output
) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out`, on any error it is removed.

    source: the folder the output is made from (checked not to overlap `out`).
    may_replace(out): whether an existing `out` may be replaced (default: only a prep output of ours).

    >>> with staged_output(Path("prepared/imagenet"), source=Path("data/imagenet")) as tmp:
    ...     (tmp / "manifest.json").write_text("{}")
    """
    out = Path(out)
    if source is not None:
        check_not_overlapping(source, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        _check_replaceable(out, may_replace)
        _remove_stale_staging(out, may_replace)
        staging = staging_dir(out)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        (staging / STAGING_MARK).touch()
        try:
            yield staging
            (staging / STAGING_MARK).unlink()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        swap_in(staging, out)


def _check_replaceable(out: Path, may_replace: Callable[[Path], bool]) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(out, "exists and is not a folder; not replacing it: choose another output folder")
    if out.exists() and not may_replace(out):
        raise DataError(
            out,
            "exists and is not an output of a visionflow prep (no manifest.json of ours); not "
            "replacing it: choose another output folder, or remove it yourself",
        )


@contextmanager
def exclusive_lock(out: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `out` (flock) for the block; fail at once if another process holds it.

    The lock file is removed on release (while still held, so a waiting process sees it vanish and
    retries on the new file instead of locking a deleted one).
    """
    path = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataError(
                out,
                f"another prep (pid {holder}) is writing this output folder right now; wait for "
                f"it to finish or choose another output folder (lock: {path})",
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)


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


def _remove_stale_staging(out: Path, may_replace: Callable[[Path], bool]) -> None:
    """Clean up after runs whose process is gone (killed, power loss); only folders that are provably ours."""
    for prefix in (f".{out.name}.staging-", f".{out.name}.old-"):
        for path in sorted(out.parent.glob(prefix + "*")):
            pid = path.name[len(prefix) :]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)) or not path.is_dir():
                continue
            if prefix.endswith(".old-"):
                if not may_replace(path):
                    log.warning("leaving %s alone: not an output of ours", path)
                elif not out.exists():
                    # A run died between its two renames: this is the last good output, restore it.
                    log.warning("restoring %s from %s", out, path)
                    os.rename(path, out)
                else:
                    shutil.rmtree(path, ignore_errors=True)
            elif (path / STAGING_MARK).exists():
                log.info("removing stale %s", path)
                shutil.rmtree(path, ignore_errors=True)
            else:
                log.warning("leaving %s alone: no %s inside, so not a staging folder of ours", path, STAGING_MARK)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
