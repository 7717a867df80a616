"""`run_search`: run (or continue) a search in OUT, up to `parallel` trials at once, one thread each."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from lightning_modules.config import load_config
from lightning_modules.data.streaming import read_prepared
from lightning_modules.errors import ConfigError
from lightning_modules.reporting.progress import track
from lightning_modules.search.config import SearchConfig
from lightning_modules.search.results import finish
from lightning_modules.search.study import Context, open_search
from lightning_modules.search.trial import reopen_trial, run_trial
from lightning_modules.tracking import ensure_store, resolve_uri
from lightning_modules.tracking.experiments import Launch, finish_run, subprocess_launch

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("visionflow")


def run_search(
    cfg: SearchConfig, data: Path, out: Path, *, launch: Launch = subprocess_launch, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Run (or continue) the search in OUT; returns the summary (also in OUT/trials.json, OUT/best.yaml).

    `launch` is called from up to `cfg.parallel` threads at once. A failed job marks its trial FAIL
    and the search goes on; any other error stops it (the running trials finish first).
    """
    data, out = Path(data).resolve(), Path(out).resolve()
    read_prepared(data)  # DataError naming the folder, before any trial starts
    out.mkdir(parents=True, exist_ok=True)
    base = load_config([*cfg.base])
    uri = resolve_uri(tracking_uri or base.tracking.tracking_uri)
    ensure_store(uri)
    lock = FileLock(str(out / ".search.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{out}: another search is running in this folder") from None
    try:
        ctx = open_search(cfg, data, out, launch, uri, base)
        try:
            summary = _search(ctx)
        except BaseException as exc:
            finish_run(uri, ctx.parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        finish_run(uri, ctx.parent_id)
        return summary
    finally:
        lock.release()


def _search(ctx: Context) -> dict[str, Any]:
    from optuna.trial import TrialState  # heavy (sqlalchemy, alembic): only when a search runs

    trials = ctx.study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    leftover = [t for t in trials if t.state == TrialState.RUNNING]  # a killed search: resume them
    new = max(0, ctx.cfg.trials_wanted() - len(finished) - len(leftover))
    total = len(leftover) + new
    if finished:
        log.info(
            "search %s: %d trial(s) already finished, %d to resume, %d new", ctx.out, len(finished), len(leftover), new
        )
    for _ in track(_run_trials(ctx, leftover, new), f"search {ctx.cfg.name}", total=total, log_every=30):
        pass
    return finish(ctx)


def _run_trials(ctx: Context, leftover: list[optuna.trial.FrozenTrial], new: int) -> Iterator[dict[str, Any]]:
    """Up to `parallel` trials at once (the leftover ones first); yields each trial's record as it ends."""
    todo = list(leftover)
    distributions = {k: p.distribution() for k, p in ctx.cfg.space.items()}
    error: BaseException | None = None
    running: set[Future] = set()

    def next_trial() -> tuple[optuna.trial.Trial, dict[str, Any]]:
        nonlocal new
        with ctx.lock:
            if todo:
                trial = reopen_trial(ctx.study, todo.pop(0))
            else:
                new -= 1
                trial = ctx.study.ask(distributions)
            return trial, dict(trial.params)

    with ThreadPoolExecutor(max_workers=ctx.cfg.parallel, thread_name_prefix="trial") as pool:
        try:
            while True:
                while error is None and (todo or new > 0) and len(running) < ctx.cfg.parallel:
                    running.add(pool.submit(run_trial, ctx, *next_trial()))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        yield fut.result()
                    except Exception as exc:  # noqa: BLE001 - stop launching, let the running ones end
                        error = error or exc
        except BaseException:
            ctx.stopping.set()
            raise
    if error is not None:
        raise error
