"""Vanilla gradients and SmoothGrad."""

from __future__ import annotations

import numpy as np
import torch

from bonefrac.maps.pointing_game import score_image
from bonefrac.maps.saliency import smoothgrad, vanilla_gradient
from tests.maps.conftest import SIZE, small_classifier


def test_saliency_points_at_the_mark(mark_model, mark_test):
    pos = np.where(mark_test.labels == 1)[0]
    heat, logits = vanilla_gradient(mark_model, mark_test.inputs(pos))
    assert heat.shape == (len(pos), SIZE, SIZE) and logits.shape == (len(pos),)
    assert np.allclose(heat.reshape(len(pos), -1).max(axis=1), 1.0)
    hits = [score_image(h, mark_test.boxes[i])["hit"] for h, i in zip(heat, pos, strict=True)]
    assert np.mean(hits) >= 0.8


def test_saliency_is_the_pixel_gradient():
    """|sum over the 3 copied channels of d logit / d x|, normalised to peak 1."""
    model = small_classifier().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    heat, _ = vanilla_gradient(model, x)
    xr = x.clone().requires_grad_(True)
    model(xr)[:, 0].sum().backward()
    ref = xr.grad.sum(1).abs()
    ref = (ref / ref.flatten(1).max(1).values.view(-1, 1, 1)).numpy()
    np.testing.assert_allclose(heat, ref, rtol=1e-4, atol=1e-6)


def test_smoothgrad_reproducible_and_smoother(mark_model, mark_test):
    pos = np.where(mark_test.labels == 1)[0][:4]
    x = mark_test.inputs(pos)
    a, la = smoothgrad(mark_model, x, n_samples=6, seed=3)
    b, lb = smoothgrad(mark_model, x, n_samples=6, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    with torch.no_grad():
        np.testing.assert_allclose(la, mark_model(x)[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    v, _ = vanilla_gradient(mark_model, x)

    def roughness(m):  # mean absolute difference between neighbouring pixels
        return np.abs(np.diff(m, axis=-1)).mean()

    assert roughness(a) < roughness(v)
    assert all(p.grad is None for p in mark_model.parameters())
