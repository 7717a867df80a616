"""YOLO v1/v2/v3 detectors: head shapes, losses that learn, overfit -> mAP, decode + NMS, backbone loading."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.detection.boxes import ciou_loss, giou_loss, wh_iou, xywh_to_xyxy, xyxy_to_xywh
from lightning_modules.detection.decode import postprocess
from lightning_modules.detection.models import DETECTORS, build_detector, load_backbone
from lightning_modules.errors import ConfigError
from lightning_modules.models import build_model

SIZE = 96
V2_ANCHORS = [[15, 15], [30, 30], [38, 30], [45, 45], [60, 60]]
V3_ANCHORS = [[9, 9], [15, 15], [21, 21], [27, 27], [33, 33], [39, 33], [45, 45], [60, 60], [75, 75]]
ANCHORS = {"yolov1": None, "yolov2": V2_ANCHORS, "yolov3": V3_ANCHORS}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convs on a busy 2-core machine run ~50x faster single-threaded
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic_batch():
    """Two noise images with filled, class-coloured rectangles (learnable)."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, SIZE, SIZE, generator=g) * 0.3
    boxes = [
        torch.tensor([[6.0, 9, 45, 42], [54, 45, 90, 87], [15, 60, 39, 90]]),
        torch.tensor([[30.0, 12, 75, 45], [9, 51, 42, 84]]),
    ]
    labels = [torch.tensor([0, 1, 2]), torch.tensor([1, 0])]
    colours = torch.eye(3)
    for i in range(2):
        for b, lab in zip(boxes[i], labels[i]):
            x1, y1, x2, y2 = b.long().tolist()
            images[i, :, y1:y2, x1:x2] = colours[lab][:, None, None]
    return images, [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]


def tiny(version: str, **kw):
    torch.manual_seed(0)
    return build_detector(version, "darknet19", 3, ANCHORS[version], width=0.25, image_size=SIZE, **kw)


def test_head_output_shapes():
    x = torch.rand(2, 3, SIZE, SIZE)
    assert tiny("yolov1")(x).shape == (2, 7, 7, 2 * 5 + 3)
    assert tiny("yolov1", fc=False, grid=4, boxes=3)(x).shape == (2, 4, 4, 3 * 5 + 3)
    assert tiny("yolov2")(x).shape == (2, 5, 3, 3, 8)
    assert [tuple(r.shape) for r in tiny("yolov3")(x)] == [(2, 3, 12, 12, 8), (2, 3, 6, 6, 8), (2, 3, 3, 3, 8)]
    # any registry backbone, and small_input (strides 2/4/8)
    m = build_detector("yolov3", "resnet18", 3, V3_ANCHORS, width=0.25, small_input=True, image_size=64)
    assert [tuple(r.shape[2:4]) for r in m(torch.rand(1, 3, 64, 64))] == [(32, 32), (16, 16), (8, 8)]
    m = build_detector("yolov1", "yolov1", 3, width=0.25, image_size=128)
    assert m(torch.rand(1, 3, 128, 128)).shape == (1, 7, 7, 13)
    assert set(DETECTORS) == {"yolov1", "yolov2", "yolov3"}


def fit(model, images, targets, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        total, parts = model.loss(model(images), targets, SIZE)
        assert torch.isfinite(total) and all(v == v for v in parts.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    return losses


@pytest.mark.parametrize(
    "version,options",
    [
        ("yolov1", {}),
        ("yolov2", {}),
        ("yolov3", {"box_loss": "giou"}),
        ("yolov3", {"box_loss": "mse", "match_iou": 0.3}),
        ("yolov3", {"assign": "v5", "ignore_iou": None, "obj_target": "iou", "label_smoothing": 0.1}),
    ],
)
def test_loss_decreases(version, options):
    images, targets = synthetic_batch()
    losses = fit(tiny(version, **options), images, targets, 30)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize(
    "version,steps,options", [("yolov3", 60, {}), ("yolov2", 60, {}), ("yolov3", 60, {"assign": "v5"})]
)
def test_overfit_recovers_boxes(version, steps, options):
    from torchmetrics.detection import MeanAveragePrecision

    images, targets = synthetic_batch()
    model = tiny(version, **options)
    fit(model, images, targets, steps)
    metric = MeanAveragePrecision(iou_type="bbox")
    metric.update(model.predict(images, conf=0.1, iou=0.45), targets)
    assert metric.compute()["map_50"] >= 0.9


def test_nms_class_aware_and_agnostic():
    box = torch.tensor([10.0, 10, 50, 50])
    boxes = torch.stack([box, box + 1, box + 2, box])[None]  # 3 duplicates of class 0, one of class 1
    scores = torch.zeros(1, 4, 2)
    scores[0, :3, 0] = torch.tensor([0.9, 0.8, 0.7])
    scores[0, 3, 1] = 0.6
    aware = postprocess(boxes, scores, 64, conf=0.25, iou=0.5)[0]
    assert sorted(aware["labels"].tolist()) == [0, 1] and aware["scores"].max() == pytest.approx(0.9)
    agnostic = postprocess(boxes, scores, 64, conf=0.25, iou=0.5, agnostic=True)[0]
    assert agnostic["labels"].tolist() == [0] and agnostic["scores"].tolist() == pytest.approx([0.9])
    assert len(postprocess(boxes, scores, 64, conf=0.95)[0]["boxes"]) == 0  # confidence filter
    assert len(postprocess(boxes, scores, 64, conf=0.1, iou=0.5, max_det=1)[0]["boxes"]) == 1


def test_multi_label_scores_an_uncertain_box_for_each_likely_class():
    boxes = torch.tensor([[[10.0, 10, 50, 50], [60, 60, 90, 90]]])
    scores = torch.tensor([[[0.5, 0.4, 0.0005], [0.0, 0.0, 0.9]]])
    single = postprocess(boxes, scores, 96, conf=0.001)[0]
    assert single["labels"].tolist() == [2, 0]  # one label per box: class 1 is lost for the first box
    multi = postprocess(boxes, scores, 96, conf=0.001, multi_label=True)[0]
    assert sorted(zip(multi["labels"].tolist(), multi["scores"].tolist())) == [
        (0, pytest.approx(0.5)),
        (1, pytest.approx(0.4)),
        (2, pytest.approx(0.9)),
    ]  # the same box for classes 0 and 1 (NMS is per class); class 2's 0.0005 is under conf
    capped = postprocess(boxes, scores, 96, conf=0.001, multi_label=True, max_candidates=1)[0]
    assert capped["scores"].tolist() == pytest.approx([0.9])  # only the best candidate enters NMS


def test_box_helpers():
    b = torch.tensor([[1.0, 2, 11, 22], [0, 0, 5, 5]])
    assert torch.allclose(giou_loss(b, b), torch.zeros(2), atol=1e-6)
    assert torch.allclose(ciou_loss(b, b), torch.zeros(2), atol=1e-6)
    assert (giou_loss(b, b.flip(0)) > 0).all()
    assert torch.equal(xywh_to_xyxy(xyxy_to_xywh(b)), b)
    assert xyxy_to_xywh(b)[0].tolist() == [1, 2, 10, 20]
    iou = wh_iou(torch.tensor([[10.0, 10]]), torch.tensor([[10.0, 10], [5, 10]]))
    assert iou[0].tolist() == pytest.approx([1.0, 0.5])


def test_load_backbone_copies_weights(tmp_path):
    torch.manual_seed(1)
    pretrained = build_model("darknet19", num_classes=10, width=0.25)
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in pretrained.state_dict().items()}}, path)
    det = tiny("yolov2")
    key = next(k for k in det.backbone.state_dict() if k.startswith("body.") and k.endswith("weight"))
    assert not torch.equal(det.backbone.state_dict()[key], pretrained.state_dict()[key])
    load_backbone(det, path)
    assert torch.equal(det.backbone.state_dict()[key], pretrained.state_dict()[key])


def test_bad_inputs():
    from lightning_modules.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown"):
        build_detector("yolov9", "darknet19", 3)
    with pytest.raises(ConfigError, match="anchors"):
        build_detector("yolov3", "darknet19", 3, None, width=0.25)
    with pytest.raises(ConfigError, match="9 positive"):
        build_detector("yolov3", "darknet19", 3, V2_ANCHORS, width=0.25)


def test_v5_assignment_uses_neighbour_cells_and_every_fitting_anchor():
    """One 20 x 20 object centred at (27, 21) on a 96-px input: at stride 8 (cell (3, 2), offsets 0.375
    and 0.625) the neighbours across the nearer edges are (2, 2) and (3, 3); anchors within 4x of its size."""
    from lightning_modules.detection.losses import YoloV3Loss

    loss = YoloV3Loss(3, torch.tensor(V3_ANCHORS, dtype=torch.float32), assign="v5")
    c = torch.tensor([[27.0, 21.0, 20.0, 20.0]])
    g, k, gx, gy = loss._match(c, loss.anchors, 0, 3, 12, 12, SIZE, SIZE)
    cells = sorted({(int(x), int(y)) for x, y in zip(gx, gy)})
    assert cells == [(2, 2), (3, 2), (3, 3)]
    assert len(g) == 9  # the three stride-8 anchors (9, 15, 21 px) are all within 4x of 20 px, x 3 cells
    # the best-anchor rule of YOLOv3 gives one positive, in the centre cell
    v3 = YoloV3Loss(3, torch.tensor(V3_ANCHORS, dtype=torch.float32))
    g, k, gx, gy = v3._match(c, v3.anchors, 0, 3, 12, 12, SIZE, SIZE)
    assert (len(g), int(gx[0]), int(gy[0]), int(k[0])) == (1, 3, 2, 2)


def test_grid_sensitive_decoding_reaches_the_neighbouring_cells():
    from lightning_modules.detection.decode import anchor_boxes

    raw = torch.zeros(1, 1, 2, 2, 8)
    anchor = torch.tensor([[10.0, 10.0]])
    plain = anchor_boxes(raw, anchor, 32)
    sensitive = anchor_boxes(raw, anchor, 32, grid_sensitive=True)
    assert torch.allclose(plain, sensitive)  # zero logits: the cell centre and the anchor in both
    raw[..., :4] = 20.0  # saturated: plain stays inside its cell, grid-sensitive reaches 1.5 cells and 4x
    plain, sensitive = anchor_boxes(raw, anchor, 32), anchor_boxes(raw, anchor, 32, grid_sensitive=True)
    assert plain[0, 0, 0, 0, 0] == pytest.approx(16.0) and sensitive[0, 0, 0, 0, 0] == pytest.approx(24.0)
    assert sensitive[0, 0, 0, 0, 2] == pytest.approx(40.0)


def test_stem_stride_puts_a_small_input_backbone_at_strides_8_16_32(tmp_path):
    """Same weights as the small-input backbone (a pretrained one loads), a quarter of the resolution."""
    small = build_model("resnet18", num_classes=4, width=0.25, small_input=True)
    nano = build_model("resnet18", num_classes=4, width=0.25, small_input=True, stem_stride=4).eval()
    assert nano.feature_strides == {8: 8, 16: 16, 32: 32} and small.feature_strides == {8: 2, 16: 4, 32: 8}
    nano.load_state_dict(small.state_dict())
    maps = nano.feature_maps(torch.rand(1, 3, 64, 64))
    assert {lv: tuple(m.shape[-2:]) for lv, m in maps.items()} == {8: (8, 8), 16: (4, 4), 32: (2, 2)}
    m = build_detector("yolov3", "resnet18", 3, V3_ANCHORS, width=0.25, small_input=True, stem_stride=4, image_size=96)
    assert [tuple(r.shape[2:4]) for r in m(torch.rand(1, 3, 96, 96))] == [(12, 12), (6, 6), (3, 3)]
    with pytest.raises(ConfigError, match="stem_stride"):
        build_model("darknet19", num_classes=4, width=0.25, stem_stride=4)
