"""How much of each training step waits for data: the loader's share, per epoch, in the log and MLflow.

A share near 0 means the model is the bottleneck (a faster loader would not help); a large share means
the steps starve (more loader workers, a prepared format, batched augmentation: issue 16).
"""

from __future__ import annotations

import logging
import time

import pytorch_lightning as L

log = logging.getLogger("visionflow")


class DataWait(L.Callback):
    """Logs `perf/data_wait_share`: time between one step's end and the next batch's arrival, over step time.

    Lightning fetches the next batch between `on_train_batch_end` and the next `on_train_batch_start`, so
    that gap is the wait; the step is the time from one batch end to the next. The first batch of an
    epoch (worker start-up) counts too: it is part of what the loader costs."""

    def __init__(self) -> None:
        self._last_end: float | None = None
        self._wait = self._total = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = time.perf_counter()
        self._wait = self._total = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._last_end is not None:
            self._wait += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._total += now - self._last_end
        self._last_end = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._total <= 0:
            return
        share = self._wait / self._total
        pl_module.log("perf/data_wait_share", share, on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            log.info("epoch %d: %.1f%% of the step time waited for data", trainer.current_epoch, 100 * share)
