"""The model zoo (paper Sec. 5): nine paper models + Swin, skip cuts, dense variants, micro designs,
block selection. Shape-only checks build on the meta device (no memory, no init) to stay fast."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from gradleak.attacks.optimization import select_layers
from gradleak.cli import main
from gradleak.config import ModelConfig, load_config
from gradleak.errors import GradleakError
from gradleak.models import MODELS, build_model, count_parameters
from gradleak.models.base import make_norm
from gradleak.models.blocks import block_parameters, block_share, named_blocks
from gradleak.models.densenet import dense_sources
from gradleak.models.residual import SkipCutBlock, residual_blocks

# Parameter counts at 32 px, 3 channels, 10 classes with the default config (small_input=true).
PAPER_MODELS = {
    "vgg11": 9_231_114, "vgg16": 14_728_266, "vgg19": 20_040_522,
    "resnet18": 11_173_962, "resnet50": 23_520_842, "resnet152": 58_156_618,
    "densenet121": 6_956_426, "googlenet": 5_602_474, "inception_v3": 21_806_058,
}
OTHER_MODELS = {"resnet34": 21_282_122, "swin_t": 27_507_028, "densenet43": 2_167_786,
                "densenet53": 3_151_722}


def _build(meta: bool = False, channels: int = 3, resolution: int = 32, **kw) -> nn.Module:
    def make() -> nn.Module:
        return build_model(ModelConfig(**kw), num_classes=10, channels=channels,
                           resolution=resolution, mean=(0.5,) * channels, std=(0.25,) * channels)

    if meta:
        with torch.device("meta"):
            return make()
    return make()


@pytest.mark.parametrize("name", [*PAPER_MODELS, "swin_t"])
def test_paper_models_forward_backward_at_32px(name):
    torch.manual_seed(0)
    model = _build(name=name)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters()), "unused parameters"
    params = count_parameters(model)
    print(f"{name}: {params:,} parameters")
    assert params == {**PAPER_MODELS, **OTHER_MODELS}[name]


def test_all_zoo_models_registered_with_their_sizes():
    for name, params in {**PAPER_MODELS, **OTHER_MODELS}.items():
        assert name in MODELS
        assert count_parameters(_build(meta=True, name=name)) == params


def test_gradleak_models_lists_every_model(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from gradleak.models.hf import TEXT_MODELS

    assert {line.split()[0] for line in lines} == set(MODELS.names()) | set(TEXT_MODELS.names())
    row = next(line for line in lines if line.startswith("resnet152 "))
    assert "58,156,618 parameters" in row


def test_resnet18_unchanged_by_the_refactor():
    """Same seed, same weights as the original builder (torchvision + replaced 3x3 stem)."""
    torch.manual_seed(3)
    ours = _build(name="resnet18").net
    torch.manual_seed(3)
    ref = resnet18(weights=None, num_classes=10, norm_layer=partial(make_norm, "batch"))
    ref.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    ref.maxpool = nn.Identity()
    for (n1, a), (n2, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b)


@pytest.mark.parametrize("name", ["vgg11", "resnet50", "densenet121", "googlenet", "swin_t"])
def test_imagenet_stems_and_other_channels(name):
    """small_input=false keeps torchvision's stems; one input channel works either way (shapes)."""
    for small in (True, False):
        model = _build(meta=True, name=name, small_input=small, channels=1)
        assert model(torch.empty(2, 1, 32, 32, device="meta")).shape == (2, 10)


def test_small_input_stems():
    net = _build(meta=True, name="resnet50").net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    assert _build(meta=True, name="resnet50", small_input=False).net.conv1.stride == (2, 2)
    g = _build(meta=True, name="googlenet").net
    assert g.conv1.conv.stride == (1, 1) and isinstance(g.maxpool2, nn.Identity)
    assert g.aux1 is None and not g.transform_input
    inc = _build(meta=True, name="inception_v3").net
    assert inc.Conv2d_1a_3x3.conv.stride == (1, 1) and inc.Conv2d_2a_3x3.conv.padding == (1, 1)
    assert inc.AuxLogits is None and not inc.transform_input
    d = _build(meta=True, name="densenet121").net.features
    assert d.conv0.kernel_size == (3, 3) and isinstance(d.pool0, nn.Identity)
    vgg = _build(meta=True, name="vgg16").net
    assert [m.in_features for m in vgg.classifier if isinstance(m, nn.Linear)] == [512]


def test_inception_v3_needs_small_input_below_75px():
    with pytest.raises(GradleakError, match="needs data.resolution >= 75"):
        _build(meta=True, name="inception_v3", small_input=False)
    model = _build(meta=True, name="inception_v3", small_input=False, resolution=75)
    assert model(torch.empty(2, 3, 75, 75, device="meta")).shape == (2, 10)


def test_norm_switch():
    for name in ("vgg11", "resnet34", "densenet121", "googlenet", "inception_v3", "densenet43"):
        none = _build(meta=True, name=name, norm="none")
        group = _build(meta=True, name=name, norm="group")
        assert not any(isinstance(m, nn.BatchNorm2d) for m in none.modules()), name
        assert any(isinstance(m, nn.GroupNorm) for m in group.modules()), name
        assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules()), name
    swin = _build(meta=True, name="swin_t", norm="none")
    assert not any(isinstance(m, nn.LayerNorm) for m in swin.modules())
    with pytest.raises(GradleakError, match="LayerNorm"):
        _build(meta=True, name="swin_t", norm="group")


# -- skip connections (Fig. 9) -------------------------------------------------------------------


def _branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual branch of a BasicBlock before the final ReLU."""
    return block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))


def test_skip_cut_removes_the_identity_path():
    torch.manual_seed(0)
    intact = _build(name="resnet18").eval()
    torch.manual_seed(0)
    cut = _build(name="resnet18", skip_cuts=[1, 3]).eval()
    blocks = dict(residual_blocks(cut.net))
    assert isinstance(blocks["layer1.0"], SkipCutBlock) and blocks["layer1.0"].identity is False
    assert isinstance(blocks["layer2.0"], SkipCutBlock)
    assert not isinstance(blocks["layer1.1"], SkipCutBlock)
    # Cutting block 3 drops its projection shortcut; the shared weights are identical.
    names = {n for n, _ in cut.named_parameters()}
    assert not any(n.startswith("net.layer2.0.downsample") for n in names)
    intact_params = dict(intact.named_parameters())
    assert all(torch.equal(p, intact_params[n]) for n, p in cut.named_parameters())

    seen = {}
    for tag, block in (("cut", blocks["layer1.0"]), ("intact", intact.net.layer1[0])):
        block.register_forward_hook(lambda _m, inp, out, tag=tag: seen.update({tag: (inp[0], out)}))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out_cut, out_intact = cut(x), intact(x)
        x_cut, y_cut = seen["cut"]
        x_in, y_in = seen["intact"]
        assert torch.equal(x_cut, x_in)  # same stem, same block input
        branch = _branch(blocks["layer1.0"], x_cut)
        assert torch.allclose(y_cut, torch.relu(branch), atol=1e-6)
        assert not torch.allclose(y_cut, torch.relu(branch + x_cut), atol=1e-3)
        assert torch.allclose(y_in, torch.relu(branch + x_in), atol=1e-6)
    assert not torch.allclose(out_cut, out_intact, atol=1e-4)


def test_skip_cut_indices_and_gradients():
    model = _build(name="resnet34", skip_cuts=[16], meta=True)
    assert isinstance(model.net.layer4[2], SkipCutBlock)
    assert len(residual_blocks(model.net)) == 16
    with pytest.raises(GradleakError, match="1-8"):
        _build(meta=True, name="resnet18", skip_cuts=[9])
    with pytest.raises(GradleakError, match="must be >= 1"):
        load_config(None, ["model.skip_cuts=[0]"])
    assert load_config(None, ["model.skip_cuts=[2, 5]"]).model.skip_cuts == [2, 5]
    cut50 = _build(meta=True, name="resnet50", skip_cuts=[1])
    assert isinstance(cut50.net.layer1[0], SkipCutBlock) and cut50.net.layer1[0].bottleneck
    # A cut block still trains: every remaining parameter gets a gradient (no dead downsample).
    torch.manual_seed(0)
    model = _build(name="resnet18", skip_cuts=[3, 5])
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# -- dense connections (Fig. 10) -----------------------------------------------------------------

BLOCK1_IN = {  # densenet43, first dense block: input channels of layers 1..8 (growth 32)
    "full": [64, 32, 64, 96, 128, 160, 192, 224],
    "reduced": [64, 32, 64, 64, 64, 64, 64, 64],
    "minimal": [64, 32, 32, 32, 32, 32, 32, 32],
    "shortnet1": [64, 32, 64, 96, 96, 128, 128, 160],  # Ju et al.'s DenseNet43_sht1
    "shortnet2": [64, 32, 64, 64, 96, 64, 96, 64],  # Ju et al.'s DenseNet43_sht2
}


@pytest.mark.parametrize("pattern", list(BLOCK1_IN))
def test_dense_variants_input_channels(pattern):
    net = _build(meta=True, name="densenet43", dense_connections=pattern).net
    assert [conv.in_channels for conv in net.denseblock1.layers] == BLOCK1_IN[pattern]
    block_out = 32 * len(dense_sources(pattern, 9))
    assert net.transition1[0].in_channels == block_out == net.denseblock1.out_channels


def test_dense_sources_readings():
    assert dense_sources("full", 5) == [1, 2, 3, 4]
    assert dense_sources("reduced", 5) == [1, 4] and dense_sources("reduced", 2) == [1]
    assert dense_sources("minimal", 5) == [4]
    assert dense_sources("shortnet1", 9) == [1, 3, 5, 7, 8]
    assert dense_sources("shortnet2", 9) == [1, 5, 7, 8]
    assert all(dense_sources(p, 1) == [0] for p in BLOCK1_IN)


def test_densenet_depths_and_forward():
    convs43 = [m for m in _build(meta=True, name="densenet43").modules() if isinstance(m, nn.Conv2d)]
    convs53 = [m for m in _build(meta=True, name="densenet53").modules() if isinstance(m, nn.Conv2d)]
    assert len(convs43) == 1 + 38 + 4 and len(convs53) == 1 + 46 + 4
    sizes = [count_parameters(_build(meta=True, name="densenet43", dense_connections=p))
             for p in ("full", "shortnet1", "reduced", "minimal")]
    assert sizes == sorted(sizes, reverse=True)
    torch.manual_seed(0)
    model = _build(name="densenet43", dense_connections="shortnet2")
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(GradleakError, match="resolution >= 16"):
        _build(meta=True, name="densenet43", resolution=8)


# -- ConvNet micro designs (Tab. 4) --------------------------------------------------------------


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_convnet_micro_design_switches():
    base = _build(name="convnet")
    assert all(c.bias is not None for c in _convs(base))
    assert any(isinstance(m, nn.ReLU) for m in base.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in base.modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in base.modules())
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in _convs(base))

    no_bias = _build(name="convnet", bias=False)
    assert all(c.bias is None for c in _convs(no_bias))
    assert not any(isinstance(m, nn.Linear) and m.bias is not None for m in no_bias.modules())
    assert count_parameters(no_bias) < count_parameters(base)
    assert not any(isinstance(m, nn.ReLU) for m in _build(name="convnet", activation="none").modules())
    drop = [m for m in _build(name="convnet", dropout=0.3).modules() if isinstance(m, nn.Dropout)]
    assert len(drop) == 1 and drop[0].p == 0.3
    no_pool = _build(name="convnet", pooling="none")
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in no_pool.modules())
    assert count_parameters(no_pool) > count_parameters(base)  # the linear head sees 16x more
    assert sum(isinstance(m, nn.AvgPool2d) for m in _build(name="convnet", pooling="avg").modules()) == 2
    for k, pad in ((5, 2), (1, 0)):  # Tab. 4: kernel up / down, same output size
        model = _build(name="convnet", kernel_size=k, padding=pad)
        assert all(c.kernel_size == (k, k) for c in _convs(model))
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    for pad in (2, 3):  # Tab. 4: padding up grows the maps (and the linear head)
        model = _build(name="convnet", padding=pad)
        assert all(c.padding == (pad, pad) for c in _convs(model))
        assert count_parameters(model) > count_parameters(base)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    outs = {}
    for kw in ({}, {"activation": "none"}, {"pooling": "none"}, {"bias": False}):
        torch.manual_seed(1)
        outs[str(kw)] = _build(name="convnet", **kw).eval()(x)
    assert len({tuple(o.flatten()[:5].tolist()) for o in outs.values()}) == len(outs)


# -- block gradients (Tab. 3) --------------------------------------------------------------------


def test_named_blocks_googlenet_and_inception():
    g = _build(meta=True, name="googlenet")
    blocks = named_blocks(g)
    assert list(blocks) == ["inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
                            "inception4d", "inception4e", "inception5a", "inception5b"]
    names = [n for n, _ in g.named_parameters()]
    assert blocks["inception3a"] == [n for n in names if n.startswith("net.inception3a.")]
    sizes = dict((n, p.numel()) for n, p in g.named_parameters())
    share = sum(sizes[n] for n in blocks["inception3a"]) / sum(sizes.values())
    assert block_share(g, "inception3a") == pytest.approx(share)
    assert block_share(g, "net.inception3a") == pytest.approx(share)
    assert 0.02 < share < 0.035  # the paper's Tab. 3 lists 2.72% for GoogLeNet's first NIN block
    inc = _build(meta=True, name="inception_v3")
    blocks = named_blocks(inc)
    assert list(blocks)[0] == "Mixed_5b" and list(blocks)[-1] == "Mixed_7c" and len(blocks) == 11
    assert 0.005 < block_share(inc, "Mixed_5b") < 0.02  # Tab. 3: 1.14%
    with pytest.raises(GradleakError, match="unknown block 'inception9z'"):
        block_parameters(g, "inception9z")


def test_named_blocks_other_models():
    assert list(named_blocks(_build(meta=True, name="resnet18")))[:2] == ["layer1.0", "layer1.1"]
    assert "layer1.0" in named_blocks(_build(meta=True, name="resnet18", skip_cuts=[1]))
    assert "denseblock1" in named_blocks(_build(meta=True, name="densenet43"))
    assert "features.denseblock1" in named_blocks(_build(meta=True, name="densenet121"))
    conv = _build(meta=True, name="convnet", norm="none")
    assert list(named_blocks(conv)) == ["0.0", "0.4", "0.8", "3"]  # fallback: layers
    total = sum(block_share(conv, b) for b in named_blocks(conv))
    assert total == pytest.approx(1.0)


def test_select_layers_accepts_bare_block_names():
    g = _build(meta=True, name="googlenet")
    names = [n for n, _ in g.named_parameters()]
    expected = [i for i, n in enumerate(names) if n.startswith("net.inception3a.")]
    assert select_layers(names, ["inception3a"]) == expected
    assert select_layers(names, ["net.inception3a"]) == expected
    both = select_layers(names, ["inception3a", "net.fc"])
    assert both == expected + [names.index("net.fc.weight"), names.index("net.fc.bias")]
    with pytest.raises(GradleakError, match="matches no parameter"):
        select_layers(names, ["inception9z"])


def test_architecture_switches_refuse_models_without_them():
    from gradleak.config import load_config
    from gradleak.errors import GradleakError
    from gradleak.models import build_model

    kw = {"num_classes": 10, "channels": 3, "resolution": 16, "mean": (0.5,) * 3, "std": (0.2,) * 3}
    with pytest.raises(GradleakError, match="skip_cuts=.*needs a ResNet"):
        build_model(load_config(overrides=["model.name=convnet", "model.skip_cuts=[1]"]).model, **kw)
    with pytest.raises(GradleakError, match="dense_connections='minimal' needs one of densenet43"):
        build_model(load_config(overrides=["model.name=mlp",
                                           "model.dense_connections=minimal"]).model, **kw)
