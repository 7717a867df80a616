"""Progress for long work: a Rich bar on a terminal, and log lines everywhere.

Library code calls `track(...)`; under Dagster the log lines reach the run's event
log (Dagster captures the `visionflow` logger), on a terminal the user sees a bar.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("visionflow")


def log_to_stderr(fmt: str = "%(asctime)s %(levelname)s %(message)s", filter: logging.Filter | None = None) -> None:
    """Send the `visionflow` logger's INFO lines to stderr, unless the process already set up logging."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    if filter is not None:
        handler.addFilter(filter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def track(items: Iterable[T], description: str, total: int | None = None, log_every: float = 10.0) -> Iterator[T]:
    """Yield from `items`, showing a Rich progress bar on a TTY and logging every `log_every` seconds."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    start = last = time.monotonic()
    done = 0
    bar = None
    if sys.stderr.isatty():
        from rich.progress import Progress  # lazy: rich only draws a bar on a TTY

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(description, total=total)
    try:
        for item in items:
            yield item
            done += 1
            if bar is not None:
                bar.advance(task)
            now = time.monotonic()
            if now - last >= log_every:
                last = now
                of = f"/{total}" if total else ""
                log.info("%s: %d%s (%.0f/s)", description, done, of, done / max(now - start, 1e-9))
    finally:
        if bar is not None:
            bar.stop()
    elapsed = time.monotonic() - start
    log.info("%s: %d done in %.1fs", description, done, elapsed)
