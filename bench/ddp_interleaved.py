"""DDP's efficiency, step by step: run under torchrun with 2 ranks x 1 thread (bench/training.py starts it).

    python -m torch.distributed.run --standalone --nproc-per-node 2 bench/ddp_interleaved.py DATA OUT.json

Four arms alternate step by step (A B C D D C B A), each step closed by a barrier, timed on rank 0:
  one rank    rank 0 trains a plain copy of the model, rank 1 waits: the 1-rank baseline;
  pair        both ranks train their plain copy, no communication: the machine's ceiling for two processes;
  DDP fp32    both ranks train a DDP copy with the job's settings (training/trainer.py): fp32 all-reduce;
  DDP bf16    the same with the job's CPU default, the bf16 compression hook.
Efficiency of an arm = seconds of a one-rank step / seconds of its step (it trains twice the images).
Whole runs taken in turn could not measure a few percent on this VM: its speed moves 10-20% within
minutes, more with two busy processes; step by step, the drift hits every arm alike.
Same model (ResNet-18), batch per rank and fused SGD as bench/training.py; the batches are read once from
the prepared set and cycled, so loading costs no arm anything. Lightning's own cost is part 1 of
bench/training.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARMS = ("one_rank", "pair", "ddp_fp32", "ddp_bf16")


def batches(data: Path, size: int, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from lightning_modules.classification.datamodule import ClassificationDataModule
    from lightning_modules.config import DataConfig

    dm = ClassificationDataModule(
        data, DataConfig(batch_size=batch, num_workers=0, augment=False, image_size=size), seed=0
    )
    dm.setup("fit")
    mean = torch.tensor(dm.info.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(dm.info.std).view(1, 3, 1, 1) * 255
    out = []
    for images, labels in dm.train_dataloader():
        out.append((((images.float() - mean) / std).contiguous(), labels))
        if len(out) == count:
            return out
    return out


def trainer(model: torch.nn.Module):
    from lightning_modules.classification.module import param_groups

    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    size, batch, cycles, warmup = (int(v) for v in sys.argv[3:7])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from lightning_modules.models import build_model
    from lightning_modules.training.trainer import COMM_HOOKS

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model("resnet18", num_classes=10, width=1.0).train()

    def ddp(hook) -> DistributedDataParallel:
        # the job's DDP settings (training/trainer.py: strategy): buckets as gradient views, the hook
        wrapped = DistributedDataParallel(model(), gradient_as_bucket_view=True)
        if hook is not None:
            wrapped.register_comm_hook(state=None, hook=hook)
        return wrapped

    solo = trainer(model())
    steps = {
        "one_rank": solo if rank == 0 else None,
        "pair": solo,
        "ddp_fp32": trainer(ddp(None)),
        "ddp_bf16": trainer(ddp(COMM_HOOKS["bf16"])),
    }
    data_batches = batches(data, size, batch, 8)
    seconds: dict[str, list[float]] = {a: [] for a in ARMS}
    order = [*ARMS, *reversed(ARMS)]
    dist.barrier()
    for cycle in range(warmup + cycles):
        for i, arm in enumerate(order):
            x, y = data_batches[(cycle * len(order) + i) % len(data_batches)]
            t0 = time.perf_counter()
            if steps[arm] is not None:
                steps[arm](x, y)
            dist.barrier()  # the step ends when both ranks are done (DDP's own step ends so too)
            if cycle >= warmup:
                seconds[arm].append(time.perf_counter() - t0)
    if rank == 0:
        out.write_text(json.dumps({"seconds": seconds, "world_size": dist.get_world_size(), "pid": os.getpid()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
