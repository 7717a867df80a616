"""Model zoo: exact torchvision counts and weights, Darknet FLOPs, uniform interface, swaps, dropout."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_modules.errors import ConfigError, DataError
from lightning_modules.models import MODEL_REGISTRY, Backbone, DropoutConfig, build_model, load_torchvision_weights
from lightning_modules.models.deep import weight_layers
from lightning_modules.models.resnet import PlainBlock
from lightning_modules.models.summary import format_summary, summarize

# He et al.'s CIFAR nets (models/cifar_resnet.py) keep the 32-px map whole: their own test below.
CIFAR = ("plain20", "plain56", "resnet20", "resnet56")
NAMES = [n for n in MODEL_REGISTRY if n not in CIFAR]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny convs gain nothing from threads, and OpenMP threads on a busy 2-core box spin for
    # seconds per forward; restore the setting for the other test files.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TORCHVISION = {
    "vgg16": (torchvision.models.vgg16, 138_357_544),
    "vgg16_bn": (torchvision.models.vgg16_bn, 138_365_992),
    "resnet18": (torchvision.models.resnet18, 11_689_512),
    "resnet34": (torchvision.models.resnet34, 21_797_672),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_param_count_and_names_match_torchvision(name):
    tv_fn, expected = TORCHVISION[name]
    with torch.device("meta"):
        ours = build_model(name)
        tv = tv_fn()
    assert n_params(ours) == n_params(tv) == expected
    # every torchvision tensor has a place of the same shape in ours
    mapped = {}
    for key, t in tv.state_dict().items():
        for tv_prefix, our_prefix in ours.torchvision_keys:
            if key.startswith(tv_prefix):
                mapped[our_prefix + key[len(tv_prefix) :]] = tuple(t.shape)
                break
    assert mapped == {k: tuple(t.shape) for k, t in ours.state_dict().items()}


def test_resnet18_loads_saved_torchvision_weights_exactly(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    for m in tv.modules():  # non-trivial BN statistics, so a mis-mapped buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    ours = load_torchvision_weights(build_model("resnet18"), path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_vgg16_loads_torchvision_state_dict_exactly_onto_meta_model():
    torch.manual_seed(0)
    tv = torchvision.models.vgg16().eval()
    with torch.device("meta"):
        ours = build_model("vgg16")
    load_torchvision_weights(ours, tv.state_dict()).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_other_class_count_keeps_a_fresh_classifier():
    tv = torchvision.models.resnet18()
    with torch.device("meta"):
        ours = build_model("resnet18", num_classes=5)
    load_torchvision_weights(ours, tv.state_dict()).eval()
    assert torch.equal(ours.body.conv1.weight, tv.conv1.weight)
    assert not ours.head.fc.weight.is_meta
    assert ours(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_mismatched_weights_and_models_without_torchvision_raise(tmp_path):
    tv = torchvision.models.resnet18()
    with pytest.raises(ConfigError, match="does not fit"):
        load_torchvision_weights(build_model("resnet34", width=1.0), tv.state_dict())
    with pytest.raises(ConfigError, match="no torchvision counterpart"):
        load_torchvision_weights(build_model("darknet19", width=0.25), tv.state_dict())
    with pytest.raises(DataError, match="missing.pth: model.torchvision_weights file not found"):
        load_torchvision_weights(build_model("resnet18", width=0.25), tmp_path / "missing.pth")


def test_darknet_flops_and_conv_counts():
    d19 = summarize("darknet19", size=224)
    assert d19["flops"] == pytest.approx(5.58e9, rel=0.01)  # YOLOv2 paper: 5.58 Bn ops
    d53 = summarize("darknet53", size=256)
    assert d53["flops"] == pytest.approx(18.57e9, rel=0.01)  # YOLOv3 paper: 18.7 Bn, darknet site 18.57
    with torch.device("meta"):
        m19, m53, y1 = build_model("darknet19"), build_model("darknet53"), build_model("yolov1")

    def count(module, kind):
        return sum(isinstance(m, kind) for m in module.modules())

    assert (count(m19.body, nn.Conv2d), count(m19.head, nn.Conv2d), count(m19, nn.MaxPool2d)) == (18, 1, 5)
    assert count(m53.body, nn.Conv2d) == 52 and isinstance(m53.head.fc, nn.Linear)
    assert count(y1.body, nn.Conv2d) == 24
    assert all(
        isinstance(m.act, nn.LeakyReLU) and m.act.negative_slope == 0.1
        for m in m53.modules()
        if isinstance(m, nn.Sequential) and hasattr(m, "bn")
    )


def test_summary_table():
    d = summarize("resnet18", size=224)
    assert d["params"] == 11_689_512 and d["flops"] == pytest.approx(3.64e9, rel=0.01)
    assert [r["name"] for r in d["layers"]][-1] == "head.fc" and d["layers"][-1]["output_shape"] == [1, 1000]
    assert sum(r["params"] for r in d["layers"]) == d["params"]
    text = format_summary(d)
    assert "resnet18" in text and "body.layer4" in text and "11,689,512" in text


@pytest.mark.parametrize("name", NAMES)
def test_interface_logits_features_and_feature_maps(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, width=0.25).eval()
    assert isinstance(model, Backbone) and model.num_classes == 7
    with torch.no_grad():
        for size in (32, 64):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
        x = torch.randn(2, 3, 64, 64)
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features)
        # the head accepts the pooled features too (Darknet-19's conv head included)
        torch.testing.assert_close(model.head(feats), model(x), rtol=1e-4, atol=1e-5)
        maps = model.feature_maps(x)
    assert sorted(maps) == [8, 16, 32]
    for level, t in maps.items():
        assert t.shape == (2, model.feature_channels[level], 64 // level, 64 // level)
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3) and model.num_classes == 3


@pytest.mark.parametrize("name", NAMES)
def test_small_input_shifts_strides_by_four(name):
    model = build_model(name, num_classes=4, width=0.25, small_input=True).eval()
    assert model.feature_strides == {8: 2, 16: 4, 32: 8}
    with torch.no_grad():
        maps = model.feature_maps(torch.randn(1, 3, 32, 32))
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert {lv: t.shape[-1] for lv, t in maps.items()} == {8: 16, 16: 8, 32: 4}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("activation", ["tanh", "binary_step"])
def test_activation_swap_reaches_every_layer(name, activation):
    model = build_model(name, num_classes=3, width=0.25, activation=activation)
    assert not any(isinstance(m, (nn.ReLU, nn.LeakyReLU)) for m in model.modules())
    kind = (
        nn.Tanh if activation == "tanh" else type(build_model("resnet18", width=0.1, activation=activation).body.relu)
    )
    assert sum(isinstance(m, kind) for m in model.modules()) > 0
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    stem = next(p for p in model.body.parameters() if p.ndim == 4)
    assert out.shape == (2, 3) and stem.grad is not None


def test_unknown_names_and_bad_values_raise_config_error():
    with pytest.raises(ConfigError, match="resnet18"):  # lists the choices
        build_model("resnet999")
    with pytest.raises(ConfigError, match="tanh"):
        build_model("resnet18", width=0.25, activation="swishy")
    with pytest.raises(ConfigError, match="width"):
        build_model("resnet18", width=0)
    with pytest.raises(ConfigError, match="dropout.blocks: Input should be less than 1"):
        build_model("resnet18", width=0.25, dropout={"blocks": 1.0})
    with pytest.raises(ConfigError, match="dropout.fc: Extra inputs are not permitted"):
        build_model("resnet18", width=0.25, dropout={"fc": 0.1})


def test_plain_nets_have_no_shortcut():
    plain = build_model("plain18", width=0.25).eval()
    res = build_model("resnet18", width=0.25).eval()
    assert not any(getattr(m, "downsample", None) is not None for m in plain.modules())
    assert n_params(plain) < n_params(res)
    p_block, r_block = plain.body.layer1[1], res.body.layer1[1]  # stride 1, same channels
    assert isinstance(p_block, PlainBlock)
    x = torch.rand(2, p_block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        for block in (p_block, r_block):
            block.conv1.weight.zero_()
            block.conv2.weight.zero_()
        assert torch.count_nonzero(p_block(x)) == 0  # nothing passes without the shortcut
        assert torch.equal(r_block(x), torch.relu(x))  # the identity passes through


@pytest.mark.parametrize("name", NAMES)
def test_dropout_placement(name):
    model = build_model(name, width=0.25, num_classes=3, dropout=DropoutConfig(input=0.1, blocks=0.2, classifier=0.3))
    first = next(iter(model.body.children()))
    assert type(first) is nn.Dropout and first.p == 0.1
    stages = [m for m in model.body.children() if isinstance(m, nn.Dropout2d)]
    assert len(stages) >= 4 and all(m.p == 0.2 for m in stages)
    head = list(model.head.children())
    assert head[-1] is model.head.fc and isinstance(head[-1], (nn.Linear, nn.Conv2d))  # nothing after the output
    assert type(head[-2]) is nn.Dropout and head[-2].p == 0.3
    if name.startswith("vgg"):
        assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.3, 0.3]  # VGG's own two
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_dropout_defaults():
    vgg = build_model("vgg16", width=0.25)
    assert [m.p for m in vgg.head if isinstance(m, nn.Dropout)] == [0.5, 0.5]  # torchvision's
    res = build_model("resnet18", width=0.25)
    assert not any(isinstance(m, nn.Dropout2d) for m in res.modules()) and res.head.drop.p == 0.0
    assert build_model("resnet18", width=0.25, dropout={"classifier": 0.2}).head.drop.p == 0.2


@pytest.mark.parametrize(
    "name, layers, params", [("resnet20", 20, 0.27e6), ("resnet56", 56, 0.85e6), ("plain20", 20, 0.27e6)]
)
def test_the_cifar_nets_are_he_et_al_section_4_2(name, layers, params):
    """6n+2 weight layers, 16/32/64 filters, maps of 32/16/8 px from a 32-px image (He et al. table 6:
    ResNet-20 0.27M, ResNet-56 0.85M parameters; our 1x1 projection shortcuts add under 1%)."""
    model = build_model(name, num_classes=10).eval()
    assert weight_layers(model) == layers + (0 if name.startswith("plain") else 2)  # + 2 projections
    assert n_params(model) == pytest.approx(params, rel=0.02)
    with torch.no_grad():
        maps = model.feature_maps(torch.randn(2, 3, 32, 32))
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert {lv: tuple(t.shape[1:]) for lv, t in maps.items()} == {8: (16, 32, 32), 16: (32, 16, 16), 32: (64, 8, 8)}
    assert model.feature_strides == {8: 1, 16: 2, 32: 4}  # the real strides of those maps
    dropped = build_model(name, num_classes=3, dropout=DropoutConfig(blocks=0.2, classifier=0.3))
    assert sum(isinstance(m, nn.Dropout2d) for m in dropped.body.children()) == 3  # one per stage
