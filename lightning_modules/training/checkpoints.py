"""Checkpoint files: loaded without ever running code, written atomically, resumed from the last good one.

Loading: `torch.load(weights_only=True)` only, so a file from anywhere (a user's download, a registry
artifact) can hold tensors and plain values but no pickled callable: a booby-trapped file is refused
before anything in it runs. Our checkpoints hold only such values (configs are dicts/lists/str/numbers).

Writing: Lightning's checkpoint callbacks write through `AtomicCheckpointIO`: into a temporary file, then
renamed over the target, so a kill mid-write never leaves a truncated file. The previous `last.ckpt`
is kept as `last-prev.ckpt`: if `last.ckpt` is damaged anyway (disk, copy, a user), the job resumes from
the one before it.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from lightning_modules.errors import DataError

log = logging.getLogger("visionflow")

LAST, PREVIOUS = "last.ckpt", "last-prev.ckpt"


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The file's dict, loaded weights-only; DataError naming the file when it is missing, damaged or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(
            path,
            f"refused to load this {what}: it holds Python objects other than weights and plain "
            f"values, and loading those could run code ({first})",
        ) from None
    except Exception as exc:  # noqa: BLE001 - zip, EOF, storage errors: all mean "this file is damaged"
        raise DataError(
            path, f"not a readable {what}: truncated or corrupt ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(blob, dict):
        raise DataError(path, f"not a {what}: expected a dict of weights and settings, found {type(blob).__name__}")
    return blob


def readable(path: Path) -> str | None:
    """None when `path` loads as a checkpoint, else the reason it does not."""
    try:
        load_checkpoint(path)
    except DataError as exc:
        return exc.problem
    return None


def resume_checkpoint(folder: Path, *, rank0: bool = True) -> Path | None:
    """The checkpoint a rerun resumes from: last.ckpt, else (missing or damaged) last-prev.ckpt, else None.

    A damaged last.ckpt with no good previous one is a DataError that names it and the way out.
    """
    last, previous = folder / LAST, folder / PREVIOUS
    if last.is_file():
        problem = readable(last)
        if problem is None:
            return last
        if previous.is_file() and readable(previous) is None:
            log.warning("%s: %s; resuming from the one before it, %s", last, problem, previous)
            if rank0:  # keep the damaged file for inspection, out of the way of the next rotation
                os.replace(last, folder / "last-damaged.ckpt")
            return previous
        raise DataError(
            last,
            f"cannot resume: {problem}, and there is no earlier good checkpoint ({PREVIOUS}). "
            "Move this file aside (or delete it) to start the run over in this folder, or "
            "use a new --out",
        )
    if previous.is_file() and readable(previous) is None:
        log.warning("%s missing (the job died while replacing it); resuming from %s", last, previous)
        return previous
    return None


def atomic_checkpoint_io():
    """A Lightning CheckpointIO plugin (Trainer(plugins=[...])) for the writes described above.

    Built on call: Lightning is a slow import that `visionflow evaluate` does not need.
    """
    from pytorch_lightning.plugins.io import TorchCheckpointIO  # lazy: see the docstring

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Write to `<name>.tmp-<pid>`, then rename over the target; rotate last.ckpt to last-prev.ckpt first."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            try:
                super().save_checkpoint(checkpoint, tmp, storage_options)
                if path.name == LAST and path.is_file():
                    os.replace(path, path.with_name(PREVIOUS))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    return AtomicCheckpointIO()
