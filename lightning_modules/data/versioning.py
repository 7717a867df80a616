"""Data versions with DVC: `data.dvc` tracks `data/`, pushed to a local-folder remote.

The data version is the md5 recorded in `data.dvc`, read straight from the file: asking
DVC would take its repository lock, which gives up after 3 s when another process
holds it. Every write (init, add, push, pull) goes through `_write_lock`, a file lock,
so concurrent jobs wait their turn instead of failing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import yaml
from filelock import FileLock

from lightning_modules.errors import DataError

DEFAULT_REMOTE = "local"
DEFAULT_REMOTE_URL = "dvc-remote"  # a folder at the project root (relative paths are taken from the root)


def read_data_version(dvc_file: Path) -> str | None:
    """The md5 of the tracked folder in a `.dvc` file (e.g. `8cd0....dir`); None if the file is absent."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        return None
    try:
        doc = yaml.safe_load(dvc_file.read_text())
        return str(doc["outs"][0]["md5"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise DataError(dvc_file, f"not a valid .dvc file (expected outs[0].md5): {exc}") from exc


@contextlib.contextmanager
def _write_lock(root: Path, timeout: float = 600) -> Iterator[None]:
    lock_dir = root / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / "visionflow-write.lock"), timeout=timeout):
        yield


def _repo(root: Path):
    from dvc.repo import Repo  # heavy import: only when DVC is really used

    return Repo(str(root))


def init(root: Path, remote_url: str = DEFAULT_REMOTE_URL) -> None:
    """`dvc init` (inside the git repo at root) and a default remote folder; idempotent."""
    root = Path(root)
    if not (root / ".git").exists():
        raise DataError(root, "not a git repository: DVC here versions data beside git (run `git init` first)")
    if not (root / ".dvc").exists():
        from dvc.repo import Repo  # lazy: dvc is slow to import; Dagster loads this module

        Repo.init(str(root)).close()
    with _write_lock(root):
        set_remote(root, remote_url)


def set_remote(root: Path, url: str, name: str = DEFAULT_REMOTE) -> None:
    """Point the default remote at `url`: a folder (relative to root) now; any DVC URL (s3://...) later."""
    from dvc.config import Config  # lazy: dvc is slow to import; Dagster loads this module

    if "://" not in url:
        folder = Path(url) if Path(url).is_absolute() else Path(root).resolve() / url
        folder.mkdir(parents=True, exist_ok=True)
        # DVC reads a relative path from the current folder and stores it relative to .dvc/,
        # so the committed config says ../dvc-remote and a clone elsewhere still finds it.
        url = os.path.relpath(folder)
    config = Config(str(Path(root) / ".dvc"))
    with config.edit("repo") as conf:
        conf["remote"][name] = {"url": url}
        conf["core"]["remote"] = name


def add(root: Path, target: str = "data") -> str:
    """`dvc add target`; returns the new data version (md5 from the .dvc file)."""
    root = Path(root)
    if not (root / target).is_dir():
        raise DataError(root / target, "no such folder to version")
    with _write_lock(root):
        repo = _repo(root)
        try:
            repo.add(str(root / target))
        finally:
            repo.close()
    return read_data_version(root / f"{target}.dvc") or ""


def push(root: Path) -> int:
    """`dvc push`: returns how many files were uploaded."""
    with _write_lock(Path(root)):
        repo = _repo(Path(root))
        try:
            return int(repo.push())
        finally:
            repo.close()


def pull(root: Path) -> None:
    """`dvc pull`: restore the tracked data from the remote."""
    with _write_lock(Path(root)):
        repo = _repo(Path(root))
        try:
            repo.pull()
        finally:
            repo.close()


def workspace_version(root: Path, target: str = "data") -> str | None:
    """The md5 in `<target>.dvc` if the folder on disk still matches it (`dvc status` clean), else None.

    A prep records this as its source's version: after an edit that was not `dvc add`ed, the md5 in the
    file describes other data than the prep reads, and recording it would be a false lineage.
    """
    root = Path(root)
    version = read_data_version(root / f"{target}.dvc")
    if version is None or not (root / ".dvc").is_dir():
        return None
    with _write_lock(root):
        repo = _repo(root)
        try:
            changed = repo.status(targets=[str(root / f"{target}.dvc")])
        finally:
            repo.close()
    return None if changed else version


def status(root: Path) -> dict:
    """Local changes (`dvc status`) and what the remote lacks (`dvc status --cloud`)."""
    repo = _repo(Path(root))
    try:
        return {"local": repo.status(), "cloud": repo.status(cloud=True)}
    finally:
        repo.close()
