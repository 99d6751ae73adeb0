"""Gradient attention: vanilla gradients and SmoothGrad for the fracture logit.

Both return ``(heat (B, H, W) float32 in [0, 1], logits (B,))``.

The three input channels are copies of one greyscale radiograph (``to_input`` expands them),
so the gradient with respect to a *pixel* is the sum of the three channel gradients; the map
is its absolute value (sign-free magnitude: how much the fracture logit moves when that pixel
changes), divided by its per-image maximum so the peak is 1.

SmoothGrad (Smilkov et al., 2017) averages that map over ``n_samples`` copies of the input with
Gaussian noise of standard deviation ``noise`` x (per-image input range), which removes most of
the speckle of vanilla gradients. The noise is seeded, so maps are reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def _pixel_gradient(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """|d logit / d pixel| ``(B, H, W)`` and the logits ``(B,)``; model must be in eval mode."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).reshape(len(x), -1)[:, 0]
        # In eval mode samples are independent, so one backward of the sum gives every
        # sample's own gradient.
        (grad,) = torch.autograd.grad(logits.sum(), x)
    return grad.sum(dim=1).abs(), logits.detach()


def _normalise(maps: Tensor) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    peak = flat.max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).float().cpu().numpy().astype(np.float32)


def vanilla_gradient(model: nn.Module, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Simonyan et al. (2014) saliency: |gradient of the fracture logit| per input pixel."""
    device = next(model.parameters()).device
    maps, logits = _pixel_gradient(model, x.to(device).contiguous())
    model.zero_grad(set_to_none=True)
    return _normalise(maps), logits.float().cpu().numpy()


def smoothgrad(
    model: nn.Module, x: Tensor, n_samples: int = 16, noise: float = 0.15, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """SmoothGrad: the mean of |gradient| over noisy copies; logits are of the clean input."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    device = next(model.parameters()).device
    x = x.detach().to(device).contiguous()
    with torch.no_grad():
        logits = model(x).reshape(len(x), -1)[:, 0].float().cpu().numpy()
    flat = x.reshape(len(x), -1)
    sigma = (noise * (flat.max(dim=1).values - flat.min(dim=1).values)).view(-1, 1, 1, 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = torch.zeros(x.shape[0], x.shape[2], x.shape[3], device=device)
    for _ in range(n_samples):
        # One noise field per pixel, shared by the 3 copied channels (it is one greyscale image).
        eps = torch.randn((x.shape[0], 1, x.shape[2], x.shape[3]), generator=gen).to(device)
        maps, _ = _pixel_gradient(model, x + sigma * eps)
        total += maps
    model.zero_grad(set_to_none=True)
    return _normalise(total / n_samples), logits
