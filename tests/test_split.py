"""cwox.core.split: rest(front(x)) equals the whole model, on EfficientNet-Lite0 and torchvision CNNs."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cwox.core.models import from_module
from cwox.core.split import split_at


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 224, 224, generator=gen)


def _torchvision(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


@pytest.mark.parametrize("layer", ["_conv_head", "_blocks.10", "_blocks.3"])
def test_lite0_split_is_exact(default_classifier, inputs, layer):
    split = split_at(default_classifier, layer)
    assert split.method == "fx", split.reason
    with torch.inference_mode():
        want = default_classifier.module(inputs)
        h = split.front(inputs)
        got = split.rest(h)
    assert h.shape[0] == 2 and h.dim() == 4
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_rest_takes_any_batch_of_variants(default_classifier, inputs):
    """The batch size is re-read from the activation, so rest runs on many variants of one map."""
    split = split_at(default_classifier, "_conv_head")
    with torch.inference_mode():
        h = split.front(inputs[:1])
        variants = h * torch.linspace(0, 1, 5).view(5, 1, 1, 1)
        out = split.rest(variants)
        assert out.shape == (5, 1000)
        torch.testing.assert_close(out[-1], default_classifier.module(inputs[:1])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer4"), ("resnet18", "layer2"), ("mobilenet_v3_small", "features.12")])
def test_torchvision_split_is_exact(inputs, arch, layer):
    net = _torchvision(arch)
    clf = from_module(net, [f"c{i}" for i in range(1000)], device="cpu")
    split = split_at(clf, layer)
    assert split.method == "fx", split.reason
    with torch.inference_mode():
        torch.testing.assert_close(split.rest(split.front(inputs)), net(inputs), atol=1e-5, rtol=0)


def test_layer_inside_a_residual_block_falls_back_to_hooks(inputs):
    """A cut inside a block has the skip connection crossing it: the hook fallback stays exact."""
    net = _torchvision("resnet18")
    split = split_at(net, "layer3.1.conv1")
    assert split.method == "hook"
    assert "crosses the cut" in split.reason
    with torch.inference_mode():
        h = split.front(inputs[:1])
        torch.testing.assert_close(split.rest(h), net(inputs[:1]), atol=1e-5, rtol=0)
        # one front input serves a batch of variants
        assert split.rest(torch.cat([h, 0.5 * h])).shape == (2, 1000)


def test_unknown_layer_is_a_clear_error(default_classifier):
    with pytest.raises(ValueError, match="no layer 'not_a_layer'"):
        split_at(default_classifier, "not_a_layer")
    with pytest.raises(ValueError, match="no layer"):
        split_at(_torchvision("resnet18"), "layer9")
    with pytest.raises(TypeError):
        split_at("resnet18", "layer4")


def test_split_shares_the_model_weights(default_classifier):
    split = split_at(default_classifier, "_conv_head")
    ours = dict(split.rest.named_parameters())
    assert ours["_fc.weight"].data_ptr() == default_classifier.module._fc.weight.data_ptr()
