"""Tests of the cascading-randomisation sanity check (``cwox.online.metrics.sanity``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cwox.online.metrics import cascading_randomization, map_ssim, parameter_layers


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 4),
    ).eval()


IMAGE = torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(1))


def input_gradient(model: torch.nn.Module) -> torch.Tensor:
    """|d logit_0 / d x| summed over channels: a map that depends on every layer."""
    x = IMAGE.clone().requires_grad_(True)
    model(x[None])[0, 0].backward()
    return x.grad.abs().sum(0)


def test_layers_are_randomised_top_down_on_a_copy():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = cascading_randomization(model, input_gradient, seed=3)
    assert parameter_layers(model) == ["0", "2", "6"]
    assert result.layers == ["6", "2", "0"]
    assert result.maps.shape == (3, 12, 12) and result.ssim.shape == (3,)
    for key, value in model.state_dict().items():  # the trained model is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # The gradient map depends on the weights: once every layer is random it no longer
    # looks like the original, and every SSIM is a similarity in [-1, 1].
    assert np.all(np.abs(result.ssim) <= 1.0)
    assert result.ssim[-1] < 0.9
    # The same seed gives the same randomisation.
    again = cascading_randomization(model, input_gradient, seed=3)
    np.testing.assert_array_equal(again.ssim, result.ssim)
    # Restricting the layers: only the named ones, still top first.
    assert cascading_randomization(model, input_gradient, layers=["0", "6"]).layers == ["6", "0"]


def test_a_model_independent_map_fails_the_check():
    # A map that ignores the model (edge detector on the image) stays identical: SSIM = 1.
    edges = (IMAGE[:, 1:, :] - IMAGE[:, :-1, :]).abs().sum(0)[:, :11]
    result = cascading_randomization(small_cnn(), lambda model: edges)
    np.testing.assert_allclose(result.ssim, 1.0)


def test_map_ssim_by_hand():
    a = np.arange(49.0).reshape(7, 7)
    assert map_ssim(a, a) == pytest.approx(1.0)
    assert map_ssim(a, 3 * a + 2) == pytest.approx(1.0)  # each map is min-max scaled first
    assert map_ssim(a, a[::-1]) < 0.5


def test_bad_arguments():
    model = small_cnn()
    with pytest.raises(ValueError, match="unknown layer names"):
        cascading_randomization(model, input_gradient, layers=["head"])
    with pytest.raises(ValueError, match="H x W heatmap"):
        cascading_randomization(model, lambda m: torch.zeros(3, 12, 12))
    with pytest.raises(ValueError, match="nn.Module"):
        cascading_randomization(lambda x: x, input_gradient)
    with pytest.raises(ValueError, match="at least 3 x 3"):
        map_ssim(np.zeros((2, 2)), np.zeros((2, 2)))
