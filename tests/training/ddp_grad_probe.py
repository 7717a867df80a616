"""Run by test_distributed.py under torchrun (2 CPU ranks, gloo): one training step of a small model with the
job's own DDP strategy and `trainer.ddp_compression`; rank 0 writes, for each 16-bit type, whether every
gradient DDP left after its all-reduce is a value of that type. Only a compression hook that really ran
leaves fp32 gradients that are all bf16 (or fp16) values.

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_grad_probe.py COMPRESSION OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as L
import torch
from pytorch_lightning.plugins.environments import TorchElasticEnvironment

from lightning_modules.training.distributed import world_info
from lightning_modules.training.trainer import strategy


class Probe(L.LightningModule):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        self.out = out

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def on_after_backward(self) -> None:
        grads = [p.grad for p in self.parameters()]
        found = {
            name: all(torch.equal(g, g.to(dtype).float()) for g in grads)
            for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))
        }
        if self.global_rank == 0:
            self.out.write_text(json.dumps({"all_values_of": found, "grads": sum(g.numel() for g in grads)}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    compression, out = sys.argv[1], Path(sys.argv[2])
    world = world_info()
    torch.manual_seed(0)  # the same data on both ranks; the sampler gives each rank its own half
    data = torch.utils.data.TensorDataset(torch.randn(32, 16), torch.randint(0, 4, (32,)))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world.local_world_size,
        strategy=strategy(world, find_unused=False, compression=compression),
        plugins=[TorchElasticEnvironment()],
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(out), torch.utils.data.DataLoader(data, batch_size=8))


if __name__ == "__main__":
    main()
