"""Decode cache (threaded fill), acquisition-variety augmentation and test-time augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bonefrac.data.dataset import PreparedImageCache, RadiographDataset
from bonefrac.data.transforms import RandomGamma, train_augment
from bonefrac.inference.loop import CachedInputs, collect
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import ModelMeta


def _images(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = rng.integers(40, 90, size=2)
        path = root / f"im{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_threaded_fill_decodes_the_same_pixels_as_one_thread(tmp_path: Path) -> None:
    paths = _images(tmp_path, 70)
    one, many = PreparedImageCache(48), PreparedImageCache(48)
    one.fill(paths, progress=False, threads=1)
    many.fill(paths, progress=False, threads=4)
    assert len(one) == len(many) == 70
    for p in paths:
        np.testing.assert_array_equal(one.get(p), many.get(p))


def test_strong_augmentation_keeps_shape_dtype_and_varies_the_image() -> None:
    t = train_augment(32, "strong")
    x = torch.arange(40 * 40, dtype=torch.int64).reshape(1, 40, 40).remainder(256).to(torch.uint8)
    outs = [t(x) for _ in range(20)]
    assert all(o.shape == (1, 32, 32) and o.dtype == torch.uint8 for o in outs)
    assert len({o.float().mean().item() for o in outs}) > 10
    pickle.dumps(t)  # DataLoader workers must be able to receive it


def test_random_gamma_brightens_or_darkens_monotonically() -> None:
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    dark = RandomGamma((2.0, 2.0), p=1.0)(x)
    bright = RandomGamma((0.5, 0.5), p=1.0)(x)
    assert (dark <= x).all() and (bright >= x).all()
    assert dark.flatten().diff().ge(0).all()  # order of grey levels is kept
    assert torch.equal(RandomGamma(p=0.0)(x), x)


class _LeftHalf(torch.nn.Module):
    """Logit = mean of the left half of the image: mirror-sensitive on purpose."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, :, : x.shape[3] // 2].mean(dim=(1, 2, 3)).unsqueeze(1)


def test_tta_averages_the_image_and_its_mirror(tmp_path: Path) -> None:
    paths = _images(tmp_path, 5)
    frame = pd.DataFrame({"path": paths, "label": [0, 1, 0, 1, 0]})
    ds = RadiographDataset(frame, PreparedImageCache(32))
    model = _LeftHalf()
    meta = ModelMeta(architecture="left_half", image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3)
    predictor = Predictor.from_model(model, meta)
    plain = collect(predictor, CachedInputs(ds), progress=False).logits
    tta = collect(predictor, CachedInputs(ds), progress=False, tta=True).logits
    x = torch.stack([ds[i][0] for i in range(5)]).float() / 255.0
    whole = x.mean(dim=(1, 2, 3)).numpy()  # left + right halves = the whole image
    np.testing.assert_allclose(tta, whole, rtol=1e-5)
    assert not np.allclose(plain, tta)
