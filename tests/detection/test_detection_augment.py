"""Detection augmentation keeps boxes on their pixels: draw a solid rectangle, find it after the transform."""

import pytest
import torch

from lightning_modules.detection.augment import (
    AffineConfig,
    HSVConfig,
    build_eval_transform,
    build_train_transform,
    letterbox,
    make_sample,
    mosaic,
    unletterbox_boxes,
)

# noise stays in [0, 100] and the letterbox fill is 114, so a channel over 180 can only come from a rectangle
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def painted(h, w, box, colour=COLOURS[0], seed=0, label=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 101, (3, h, w), dtype=torch.uint8, generator=g)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    return make_sample(img, [box], [label])


def colour_mask(img, colour):
    img = img.as_subclass(torch.Tensor)
    on = [img[c] > 180 if v == 255 else img[c] < 120 for c, v in enumerate(colour)]
    return on[0] & on[1] & on[2]


def found_box(img, colour=COLOURS[0]):
    ys, xs = torch.nonzero(colour_mask(img, colour), as_tuple=True)
    assert len(xs), "rectangle vanished"
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def as_plain(boxes):
    return boxes.as_subclass(torch.Tensor).float()


@pytest.mark.parametrize("h,w,size", [(40, 60, 64), (60, 30, 96), (50, 50, 32)])
def test_letterbox_keeps_pixels_and_maps_back(h, w, size):
    box = (7, 9, 27, 33) if h >= 40 and w >= 30 else (5, 6, 20, 25)
    image, target = painted(h, w, box)
    out, t, scale, pad = letterbox(image, target, size)
    assert out.shape == (3, size, size)
    assert torch.allclose(found_box(out), as_plain(t["boxes"][0]), atol=1.5)
    back = unletterbox_boxes(t["boxes"], scale, pad, orig_size=(h, w))
    assert torch.allclose(back[0], torch.tensor(box, dtype=torch.float32), atol=1.0)


def test_eval_transform_records_mapping():
    image, target = painted(40, 60, (10, 5, 30, 20))
    out, t = build_eval_transform(64)(image, target)
    assert out.shape == (3, 64, 64) and t["orig_size"] == (40, 60) and t["labels"].tolist() == [0]
    back = unletterbox_boxes(t["boxes"], t["scale"], t["pad"])
    assert torch.allclose(back, torch.tensor([[10.0, 5, 30, 20]]), atol=1.0)


def test_flip_keeps_pixels():
    image, target = painted(48, 48, (5, 10, 20, 30))
    t = build_train_transform(48, mosaic_prob=0.0, affine=None, hsv=None, flip=1.0)
    out, tt = t(image, target)
    assert torch.allclose(as_plain(tt["boxes"][0]), torch.tensor([28.0, 10, 43, 30]), atol=1e-4)
    assert torch.allclose(found_box(out), as_plain(tt["boxes"][0]), atol=1.0)


@pytest.mark.parametrize("seed", range(4))
def test_affine_box_surrounds_transformed_rectangle(seed):
    image, target = painted(64, 64, (20, 18, 44, 40))
    t = build_train_transform(
        64,
        mosaic_prob=0.0,
        hsv=None,
        flip=False,
        affine=AffineConfig(degrees=10, translate=0.05, scale=(0.9, 1.1), shear=3),
    )
    torch.manual_seed(seed)
    out, tt = t(image, target)
    assert torch.allclose(found_box(out), as_plain(tt["boxes"][0]), atol=2.0)


def test_hsv_changes_colours_not_boxes():
    image, target = painted(32, 32, (4, 4, 20, 20))
    torch.manual_seed(0)
    out, tt = build_train_transform(
        32, mosaic_prob=0.0, affine=None, flip=False, hsv=HSVConfig(hue=0.0, saturation=0.0, brightness=0.5)
    )(image, target)
    assert not torch.equal(out, image)
    assert torch.equal(as_plain(tt["boxes"]), as_plain(target["boxes"]))


def _mosaic_inputs():
    sizes = [(40, 60), (60, 40), (50, 50), (30, 64)]
    boxes = [(10, 8, 40, 30), (6, 12, 30, 50), (15, 15, 35, 45), (20, 5, 50, 25)]
    return [painted(h, w, b, COLOURS[k], seed=k, label=k) for k, ((h, w), b) in enumerate(zip(sizes, boxes))]


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_keeps_pixels_and_drops_hidden_boxes(seed):
    size, samples = 64, _mosaic_inputs()
    torch.manual_seed(seed)
    out, t = mosaic(samples, size)
    assert out.shape == (3, size, size)
    boxes, labels = as_plain(t["boxes"]), t["labels"].tolist()
    assert boxes.shape == (len(labels), 4) and (boxes >= 0).all() and (boxes <= size).all()
    for k, (image, target) in enumerate(samples):
        scale = size / max(image.shape[-2:])
        full = as_plain(target["boxes"][0]) * scale
        area = float((full[2] - full[0]) * (full[3] - full[1]))
        visible = int(colour_mask(out, COLOURS[k]).sum())
        if k in labels:
            box = boxes[labels.index(k)]
            assert torch.allclose(found_box(out, COLOURS[k]), box, atol=1.5)
            assert float((box[2] - box[0]) * (box[3] - box[1])) >= 0.2 * area
        else:  # dropped: too little of it shows (slack for the blended edge pixels)
            assert visible <= 0.2 * area + 4 * (area**0.5) or visible == 0


def test_train_transform_mosaic_path_and_determinism():
    samples = _mosaic_inputs()
    t = build_train_transform(64, mosaic_prob=1.0, affine=True, hsv=True, flip=True)
    assert t.num_extras == 3

    def run(seed):
        torch.manual_seed(seed)
        return t(*samples[0], extras=samples[1:])

    (a, ta), (b, tb), (c, _) = run(3), run(3), run(4)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    assert not torch.equal(a, c)
    assert a.shape == (3, 64, 64) and len(ta["boxes"]) == len(ta["labels"])


def test_sanitize_drops_tiny_boxes_with_labels():
    img = torch.randint(0, 101, (3, 64, 64), dtype=torch.uint8)
    image, target = make_sample(img, [[10, 10, 40, 40], [50, 50, 51, 51], [5, 30, 30, 30]], [3, 7, 9])
    out, t = build_train_transform(64, mosaic_prob=0.0, affine=None, hsv=None, flip=False)(image, target)
    assert t["labels"].tolist() == [3]
    assert torch.allclose(as_plain(t["boxes"]), torch.tensor([[10.0, 10, 40, 40]]))
