"""Issue 37's levers: each randomisation keeps boxes aligned with the image and is seeded; the
source-balanced sampler weighs each source the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from bonefrac.data import transforms as T
from bonefrac.data.dataset import make_sampler, source_balanced_weights
from bonefrac.errors import DataError

SIZE = 96
#: the mark: a filled ellipse inscribed in its box (the box outlines' own shape, so a rotation
#: keeps it inside the rotated box estimate)
BOX = (30.0, 20.0, 62.0, 44.0)
#: background 0 like the letterbox padding (and a rotation's fill)
BACKGROUND, MARK = 0, 200


def marked_image(background: int = BACKGROUND) -> tuple[torch.Tensor, tv_tensors.BoundingBoxes]:
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    x0, y0, x1, y1 = BOX
    inside = (((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2) + (
        ((yy - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2
    ) <= 1
    img = torch.full((1, SIZE, SIZE), background, dtype=torch.uint8)
    img[0][inside] = MARK
    boxes = tv_tensors.BoundingBoxes(torch.tensor([BOX]), format="XYXY", canvas_size=(SIZE, SIZE))
    return img, boxes


def mark_pixels(out: torch.Tensor, box: torch.Tensor) -> tuple[int, int]:
    """(mark pixels inside the box grown by 4 px, mark pixels outside it): a mark pixel is one
    far from the background's value (the median outside the box), whichever way the transform
    moved the grey levels (inversion, gamma, window)."""
    img = out[0].float()
    x0, y0, x1, y1 = box.tolist()
    yy, xx = torch.meshgrid(torch.arange(img.shape[0]) + 0.5, torch.arange(img.shape[1]) + 0.5,
                            indexing="ij")  # fmt: skip
    near = (xx >= x0 - 4) & (xx <= x1 + 4) & (yy >= y0 - 4) & (yy <= y1 + 4)
    strict = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    background = img[~near].median()
    spread = (img[strict] - background).abs().max()
    assert spread > 30, "the mark vanished: no contrast left inside its box"
    mark = (img - background).abs() > 0.5 * spread
    return int((mark & near).sum()), int((mark & ~near).sum())


#: one transform per augmentation, each forced on (p=1) so the test sees it act
EACH: dict[str, Callable[[], v2.Transform]] = {
    "percentile_window": lambda: T.RandomPercentileWindow(p=1.0),
    "gamma": lambda: T.RandomGamma((0.5, 2.0), p=1.0),
    "autocontrast": lambda: v2.RandomAutocontrast(p=1.0),
    "equalize": lambda: v2.RandomEqualize(p=1.0),
    "invert": lambda: v2.RandomInvert(p=1.0),
    "resolution": lambda: T.RandomResolution(p=1.0),
    "jpeg": lambda: v2.JPEG((20, 90)),
    "blur": lambda: v2.GaussianBlur(5, sigma=(0.3, 1.5)),
    "sharpen": lambda: v2.RandomAdjustSharpness(3.0, p=1.0),
    "noise": lambda: T.RandomNoise(p=1.0),
    "rotation_30": lambda: v2.RandomRotation(T.GEOMETRY_DEGREES),
    "quarter_turns": lambda: T.geometry_randomisation()[0].transforms[0],
    "vertical_flip": lambda: v2.RandomVerticalFlip(p=1.0),
    "markers": lambda: T.RandomMarkers(p_paste=1.0, p_erase=1.0),
    **{
        f"train_augment[{r}]": (lambda r=r: T.train_augment(SIZE, "medium", (r,)))
        for r in T.RANDOMISE
    },
    "train_augment[all]": lambda: T.train_augment(SIZE, "medium", T.RANDOMISE),
    "train_augment[acquisition,geometry]": lambda: T.train_augment(
        SIZE, "medium", ("acquisition", "geometry")
    ),
}
#: pasted markers are new marks by design, drawn clear of the boxes (their own test below)
PASTING = ("markers", "train_augment[markers]", "train_augment[all]")


@pytest.mark.parametrize("name", sorted(set(EACH) - set(PASTING)))
def test_each_augmentation_keeps_the_mark_inside_its_transformed_box(name: str) -> None:
    img, boxes = marked_image()
    transform = EACH[name]()
    for seed in range(8):
        torch.manual_seed(seed)
        out, points = transform(img, T.box_outlines(boxes))
        assert out.shape == (1, SIZE, SIZE) and out.dtype == torch.uint8
        moved = T.outline_boxes(points, SIZE)[0]
        inside, outside = mark_pixels(out.as_subclass(torch.Tensor), moved)
        assert inside > 0.5 * (BOX[2] - BOX[0]) * (BOX[3] - BOX[1]) * 0.785 * 0.5
        assert outside <= 0.01 * inside, f"{name} seed {seed}: {outside} mark pixels outside"


@pytest.mark.parametrize("name", sorted(EACH))
def test_each_augmentation_is_seeded(name: str) -> None:
    img, boxes = marked_image()
    transform = EACH[name]()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        out, points = transform(img, T.box_outlines(boxes))
        runs.append((out.clone(), points.as_subclass(torch.Tensor).clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_the_randomisations_change_the_image() -> None:
    _, boxes = marked_image()
    img = torch.randint(30, 220, (1, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    img = img.to(torch.uint8)
    for name in ("percentile_window", "gamma", "invert", "resolution", "noise", "markers"):
        torch.manual_seed(0)
        out, _ = EACH[name]()(img, T.box_outlines(boxes))
        assert not torch.equal(out, img), name


def test_markers_are_drawn_outside_the_boxes_on_every_image() -> None:
    img, boxes = marked_image(background=90)  # grey: white and black marks both show
    x0, y0, x1, y1 = (int(v) for v in BOX)
    drawn = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out, _ = T.RandomMarkers(p_paste=1.0, p_erase=1.0)(img, T.box_outlines(boxes))
        assert torch.equal(out[:, y0:y1, x0:x1], img[:, y0:y1, x0:x1])  # the box untouched
        drawn += int(not torch.equal(out, img))
    assert drawn >= 18  # pasted (or erased) on nearly every draw, whatever the label
    without = torch.full((1, SIZE, SIZE), 90, dtype=torch.uint8)
    torch.manual_seed(0)
    assert not torch.equal(T.RandomMarkers(1.0, 1.0)(without), without)  # negatives too


def test_unknown_randomisation_is_refused() -> None:
    with pytest.raises(ValueError, match="randomise"):
        T.train_augment(SIZE, "medium", ("colour",))


def test_source_balanced_sampler_weighs_each_source_the_same() -> None:
    # source a: 800 negatives, 100 positives; b: 50 and 50
    labels = np.array([0] * 800 + [1] * 100 + [0] * 50 + [1] * 50)
    sources = np.array(["a"] * 900 + ["b"] * 100)
    p = source_balanced_weights(labels, sources)
    assert p.sum() == pytest.approx(1.0)
    for src in "ab":
        for lab in (0, 1):
            assert p[(sources == src) & (labels == lab)].sum() == pytest.approx(0.25)
    sampler = make_sampler("source_balanced", labels, seed=3, sources=sources)
    sampler.set_epoch(1)
    idx = np.array(list(sampler))
    assert len(idx) == len(labels)
    assert abs((sources[idx] == "b").mean() - 0.5) < 0.06
    again = make_sampler("source_balanced", labels, seed=3, sources=sources)
    again.set_epoch(1)
    assert list(again) == idx.tolist()  # seeded by (seed, epoch)
    again.set_epoch(2)
    assert list(again) != idx.tolist()


def test_source_balanced_sampler_needs_the_sources() -> None:
    with pytest.raises(DataError, match="source"):
        make_sampler("source_balanced", np.array([0, 1, 0, 1]))


def test_datamodule_draws_source_balanced_batches_with_its_randomisation(
    synthetic_manifest: Path,
) -> None:
    from bonefrac.config import DataConfig
    from bonefrac.data.dataset import SourceBalancedSampler
    from bonefrac.data.schema import read_manifest
    from bonefrac.training.datamodule import FractureDataModule, split_frames

    frame = read_manifest(synthetic_manifest)
    frame.loc[frame.index % 3 == 0, "source"] = "other"  # a second, smaller source
    frames = split_frames(frame, "synthetic", seed=0)
    cfg = DataConfig(
        image_size=32, batch_size=4, sampler="source_balanced", randomise=["acquisition"]
    )
    dm = FractureDataModule(frames, cfg, seed=0, progress=False)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, SourceBalancedSampler)
    x, _ = next(iter(loader))
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.uint8
    drawn = frames["train"]["source"].to_numpy()[list(loader.sampler)]
    assert set(drawn) == {"synthetic", "other"}
