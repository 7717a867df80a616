"""Batched training augmentation: per-image random crops, flips and jitter in one resampling call."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from lightning_modules.classification.batch_augment import BatchAugment


def _images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_whole_image_crop_without_flip_is_the_identity():
    images = _images()
    aug = BatchAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    out = aug(images)
    assert out.dtype == torch.float32 and out.shape == (8, 3, 32, 32)
    assert torch.allclose(out, images.float(), atol=1e-3)


def test_each_image_gets_its_own_flip():
    images = _images(1).expand(64, -1, -1, -1)
    out = BatchAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)(images, torch.Generator().manual_seed(1))
    plain = torch.isclose(out, images.float(), atol=1e-3).flatten(1).all(1)
    mirrored = torch.isclose(out, images.float().flip(-1), atol=1e-3).flatten(1).all(1)
    assert bool((plain | mirrored).all())
    assert 10 < int(plain.sum()) < 54  # both, about half each (binomial 64, 0.5)


def test_a_crop_matches_torchvision_resized_crop():
    """The affine grid of a crop box samples what torchvision's resized_crop (bilinear) gives for that box.

    Inside, exactly; on the outermost rows and columns resized_crop clamps to the crop's own edge pixels
    while the grid blends in the true neighbours just outside the crop (a fraction of a pixel)."""
    images = _images(4, 48).float()
    aug = BatchAugment(32, flip=False)
    top, left, h, w = 6, 10, 24, 30
    theta = torch.zeros(4, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w / 48, (2 * left + w) / 48 - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / 48, (2 * top + h) / 48 - 1
    grid = torch.nn.functional.affine_grid(theta, [4, 3, 32, 32], align_corners=False)
    ours = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    theirs = TF.resized_crop(images, top, left, h, w, [32, 32], antialias=False)
    diff = (ours - theirs).abs()
    assert aug.size == 32 and float(diff[..., 1:-1, 1:-1].max()) < 1e-3
    assert float(diff.mean()) < 2.0  # random 0-255 pixels: the edge rows differ, the rest do not


def test_crops_follow_random_resized_crop_bounds_and_differ_per_image():
    aug = BatchAugment(32, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip=True)
    theta = aug.crop_transforms(2000, 40, 40, torch.device("cpu"), torch.Generator().manual_seed(0))
    sx, sy = theta[:, 0, 0].abs(), theta[:, 1, 1]
    area, aspect = sx * sy, sx / sy
    assert float(area.min()) >= 0.35 - 1e-6 and float(area.max()) <= 1 + 1e-6
    assert float(aspect.min()) >= 3 / 4 - 1e-6 and float(aspect.max()) <= 4 / 3 + 1e-6
    # The crop stays inside the image: centre +- half-size within [-1, 1].
    for c, s in ((theta[:, 0, 2], sx), (theta[:, 1, 2], sy)):
        assert float((c - s).min()) >= -1 - 1e-5 and float((c + s).max()) <= 1 + 1e-5
    assert len(set(area.tolist())) > 1990  # one draw per image
    assert math.isclose(float((theta[:, 0, 0] < 0).float().mean()), 0.5, abs_tol=0.05)


def test_colour_jitter_changes_each_image_within_range():
    images = torch.full((16, 3, 16, 16), 128, dtype=torch.uint8)
    images[:, 0] = 200
    out = BatchAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, color_jitter=0.4)(images)
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    means = out.mean(dim=(1, 2, 3))
    assert len(set(means.tolist())) == 16
    assert float((means - images.float().mean()).abs().max()) > 5


def test_the_separable_grid_is_affine_grid():
    aug = BatchAugment(20)
    theta = aug.crop_transforms(16, 40, 30, torch.device("cpu"), torch.Generator().manual_seed(3))
    expected = torch.nn.functional.affine_grid(theta, [16, 3, 20, 20], align_corners=False)
    assert torch.allclose(aug.grid(theta), expected, atol=1e-6)


@pytest.mark.parametrize("stored", [24, 64])
def test_output_has_the_training_size_whatever_the_stored_size(stored):
    assert BatchAugment(32)(_images(3, stored)).shape == (3, 3, 32, 32)


def test_cpu_jobs_augment_in_the_loader_gpu_jobs_on_the_device(tiny_prepared_imagenet):
    """On a CPU the workers augment (the training process has no spare core); on a GPU the module does."""
    from lightning_modules.classification.datamodule import ClassificationDataModule
    from lightning_modules.config import DataConfig

    cfg = DataConfig(batch_size=8, num_workers=0)

    def first_batch(on_gpu: bool):
        dm = ClassificationDataModule(tiny_prepared_imagenet, cfg, seed=0, on_gpu=on_gpu)
        dm.setup("fit")
        return dm, next(iter(dm.train_dataloader()))

    cpu, (augmented, labels) = first_batch(on_gpu=False)
    gpu, (stored, same_labels) = first_batch(on_gpu=True)
    size = cpu.image_size
    assert augmented.dtype == stored.dtype == torch.uint8 and augmented.shape == stored.shape == (8, 3, size, size)
    assert torch.equal(labels, same_labels)  # the same images, in the same order
    assert cpu.device_augment() is None and not torch.equal(augmented, stored)  # cropped and flipped in the loader
    # The GPU path leaves the batch as stored and hands the module the settings.
    assert gpu.device_augment() == {"size": size, "scale": (cfg.crop_scale_min, 1.0), "color_jitter": 0.0}
    forced = ClassificationDataModule(tiny_prepared_imagenet, cfg.model_copy(update={"augment_on": "device"}))
    assert forced.device_augment() is not None
    off = ClassificationDataModule(tiny_prepared_imagenet, cfg.model_copy(update={"augment": False}), on_gpu=True)
    assert off.device_augment() is None and off.batch_augment() is None


def test_the_module_augments_train_batches_only():
    from lightning_modules.classification.module import ClassificationModule
    from lightning_modules.config import LossConfig, ModelConfig, OptimConfig

    module = ClassificationModule(
        model=ModelConfig(name="resnet18", width=0.25, small_input=True).model_dump(),
        optim=OptimConfig().model_dump(),
        loss=LossConfig().model_dump(),
        num_classes=3,
        augment={"size": 16, "scale": (0.35, 1.0), "color_jitter": 0.0},
    )
    assert module.train_augment is not None and module.train_augment.size == 16
    assert sum(1 for _ in module.train_augment.parameters()) == 0  # nothing added to checkpoints


def test_live_loader_workers_reshuffle_every_epoch_like_fresh_ones(tiny_prepared_imagenet):
    """The train loader keeps its workers across epochs (persistent_workers): each epoch must still get a
    new order, the same one freshly started workers produce (litdata passes the epoch to live workers)."""
    from litdata import StreamingDataLoader

    from lightning_modules.classification.datamodule import ClassificationDataModule, collate
    from lightning_modules.config import DataConfig

    def label_orders(loader, epochs: int = 3) -> list[list[int]]:
        return [[int(v) for _images, labels in loader for v in labels] for _ in range(epochs)]

    def datamodule() -> ClassificationDataModule:
        dm = ClassificationDataModule(tiny_prepared_imagenet, DataConfig(batch_size=8, num_workers=2, augment=False))
        dm.setup("fit")
        return dm

    job_loader = datamodule().train_dataloader()
    assert job_loader.persistent_workers
    live = label_orders(job_loader)
    fresh = label_orders(
        StreamingDataLoader(
            datamodule().train_ds,
            batch_size=8,
            num_workers=2,
            collate_fn=collate,
            drop_last=True,
            persistent_workers=False,
        )
    )
    assert len({tuple(o) for o in live}) == 3  # a new order every epoch
    assert live == fresh
