"""Localisation without training: head shapes, box targets through letterbox + augmentation,
map decoding back to the original image, the masked map loss, bad box rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from bonefrac.data.dataset import PreparedImageCache, RadiographDataset
from bonefrac.data.transforms import (
    box_outlines,
    boxes_to_letterbox,
    letterbox,
    outline_boxes,
    render_box_targets,
    train_augment,
)
from bonefrac.errors import ConfigError, ModelError
from bonefrac.inference.box_decoding import (
    choose_box_threshold,
    crop_map,
    map_peak,
    predicted_boxes,
)
from bonefrac.maps.cam import explainer
from bonefrac.maps.learned import upsample_maps
from bonefrac.models.lochead import cell_boxes
from bonefrac.models.registry import build_model
from bonefrac.training.losses import localization_loss

SIZE = 64


@pytest.mark.parametrize("name", ["simple_cnn", "efficientnet_lite0"])
def test_head_shapes(name):
    model = build_model(name, localize=True).eval()
    assert model.localizes
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logit, maps = model.forward_with_map(x)
        plain = model(x)
    assert plain.shape == (2, 1) and logit.shape == (2, 1)
    assert maps.shape == (2, 5, SIZE // 8, SIZE // 8)  # the map, then the box channels
    torch.testing.assert_close(logit, plain)  # one backbone pass gives the same logit


@pytest.mark.parametrize("name", ["simple_cnn", "efficientnet_lite0"])
def test_stride_4_head_reads_the_stride_4_features(name):
    model = build_model(name, localize=True, loc_stride=4).eval()
    with torch.no_grad():
        logit, maps = model.forward_with_map(torch.randn(2, 3, SIZE, SIZE))
    assert logit.shape == (2, 1) and maps.shape == (2, 5, SIZE // 4, SIZE // 4)


def test_torchvision_refuses_localize():
    with pytest.raises(ModelError, match="model.localize"):
        build_model("resnet50", localize=True)


def test_model_method_without_head_is_one_line_error():
    with pytest.raises(ConfigError, match="gradcam") as info:
        explainer(build_model("simple_cnn"), "model")
    assert "\n" not in str(info.value)


def _marked_image(width: int, height: int, box: list[float]) -> np.ndarray:
    arr = np.zeros((height, width), np.uint8)
    cx, cy, w, h = box
    arr[
        round((cy - h / 2) * height) : round((cy + h / 2) * height),
        round((cx - w / 2) * width) : round((cx + w / 2) * width),
    ] = 255
    return arr


@pytest.mark.parametrize("size_wh", [(200, 100), (90, 160)])
def test_boxes_follow_letterbox_and_flip(size_wh):
    box = [0.25, 0.4, 0.2, 0.3]
    arr = _marked_image(*size_wh, box)
    boxed = letterbox(Image.fromarray(arr), SIZE)
    boxes = boxes_to_letterbox([box], size_wh, SIZE)
    x0, y0, x1, y1 = boxes[0].tolist()
    inside = boxed[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1]
    assert inside.min() > 200 and boxed.sum() <= 255 * (x1 - x0 + 2) * (y1 - y0 + 2)
    img, flipped = v2.RandomHorizontalFlip(p=1.0)(torch.from_numpy(boxed)[None], boxes)
    fx0, fy0, fx1, fy1 = flipped[0].tolist()
    assert fx0 == pytest.approx(SIZE - x1) and fx1 == pytest.approx(SIZE - x0)
    assert (fy0, fy1) == pytest.approx((y0, y1))
    target, has_box = render_box_targets(flipped, SIZE, 8)
    assert has_box
    # the target's cells are where the flipped mark is
    cells = torch.nonzero(target[0])
    for r, c in cells.tolist():
        assert img[0, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8].float().mean() > 60


@pytest.mark.parametrize("size_wh", [(200, 100), (90, 160)])
def test_map_peak_decodes_back_to_original_coordinates(size_wh):
    box = [0.3, 0.6, 0.2, 0.25]
    boxes = boxes_to_letterbox([box], size_wh, SIZE)
    x0, y0, x1, y1 = boxes[0].tolist()
    prob = np.zeros((SIZE, SIZE), np.float32)
    prob[round(y0) : round(y1), round(x0) : round(x1)] = 0.9
    crop = crop_map(prob, size_wh)
    px, py = map_peak(crop)
    assert abs(px - box[0]) <= box[2] / 2 and abs(py - box[1]) <= box[3] / 2


def test_box_threshold_from_negatives():
    peaks = np.linspace(0.0, 0.5, 101)
    t = choose_box_threshold(peaks)
    assert (peaks > t).mean() <= 0.05
    assert choose_box_threshold(np.array([])) == 0.5


def test_masked_map_loss():
    maps = torch.full((2, 1, 4, 4), -3.0, requires_grad=True)
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, 1, 1] = 1
    only_first = localization_loss(maps, target, torch.tensor([1.0, 0.0]))
    both = localization_loss(maps, target, torch.tensor([1.0, 1.0]))
    assert only_first > both > 0  # the masked image (an easy all-zero map) does not count
    assert localization_loss(maps, target, torch.zeros(2)) == 0
    only_first.backward()
    assert maps.grad[1].abs().sum() == 0


def test_dataset_survives_bad_box_rows(tmp_path):
    rows = []
    values = ["[[0.5, 0.5, 0, 0]]", "not json", "[[1.5, 1.5, 0.2, 0.2]]", "[[0.9, 0.5, 0.4, 0.2]]"]
    for i, value in enumerate(values):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 60), 80, np.uint8)).save(path)
        rows.append({"image_id": path.name, "path": str(path), "label": 1, "boxes": value})
    rows.append({"image_id": "neg", "path": str(path), "label": 0, "boxes": "[]"})
    ds = RadiographDataset(
        pd.DataFrame(rows), PreparedImageCache(SIZE), train_augment(SIZE, "medium"), loc_stride=8
    )
    valid = [float(ds[i][3]) for i in range(len(ds))]
    assert valid[:3] == [0.0, 0.0, 0.0]  # zero area, unreadable, outside: classifier only
    assert valid[4] == 1.0 and ds[4][2].sum() == 0  # a negative teaches an empty map
    assert json.loads(values[3]) and ds.boxes[3][0][2] == pytest.approx(0.3)  # clipped


def test_rotation_does_not_inflate_boxes():
    """Boxes ride through augmentation as outline points: flips and crops keep them exact, a
    rotation grows them only as much as the rotated inscribed ellipse (v2's rotated corners
    make a 2:1 box a third higher at 10 degrees)."""
    from torchvision import tv_tensors

    xyxy = torch.tensor([[10.0, 20.0, 40.0, 35.0], [0.0, 50.0, 6.0, 64.0]])
    boxes = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(SIZE, SIZE))
    img = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    torch.testing.assert_close(outline_boxes(box_outlines(boxes), SIZE), xyxy)
    _, flipped = v2.RandomHorizontalFlip(p=1.0)(img, box_outlines(boxes))
    torch.testing.assert_close(outline_boxes(flipped, SIZE), v2.functional.horizontal_flip(boxes))
    cropped = v2.functional.crop(box_outlines(boxes), 5, 7, 40, 50)
    torch.testing.assert_close(
        outline_boxes(cropped, 40)[0], v2.functional.crop(boxes, 5, 7, 40, 50)[0]
    )
    angle = math.radians(10)
    rotated = outline_boxes(v2.functional.rotate(box_outlines(boxes), 10.0), SIZE)[0]
    w, h = 30.0, 15.0
    ellipse_h = math.sqrt(h**2 * math.cos(angle) ** 2 + w**2 * math.sin(angle) ** 2)
    assert float(rotated[3] - rotated[1]) == pytest.approx(ellipse_h, rel=0.01)
    assert float(rotated[2] - rotated[0]) <= w  # no wider than the box itself
    corners = v2.functional.rotate(boxes, 10.0)[0]
    assert float(corners[3] - corners[1]) > 1.25 * h  # what the corners would have taught
    # centres stay put under rotation about the image centre
    centre = (rotated[:2] + rotated[2:]) / 2
    torch.testing.assert_close(centre, (corners[:2] + corners[2:]) / 2, atol=0.05, rtol=0)


def test_augmented_targets_keep_the_boxes_shape():
    """Through the training augmentation (same random draws both ways) a 2:1 box keeps its
    shape as outline points; as corners, rotation makes it about an eighth higher."""
    from torchvision import tv_tensors

    aug = train_augment(SIZE, "medium")
    img = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[24.0, 28.0, 40.0, 36.0]]), format="XYXY", canvas_size=(SIZE, SIZE)
    )

    def aspect(box: torch.Tensor) -> float:
        return float((box[3] - box[1]) / (box[2] - box[0]))

    outlined, cornered = [], []
    for seed in range(300):
        torch.manual_seed(seed)
        outlined.append(aspect(outline_boxes(aug(img, box_outlines(boxes))[1], SIZE)[0]))
        torch.manual_seed(seed)
        cornered.append(aspect(aug(img, boxes)[1][0].clamp(0, SIZE)))
    assert np.median(outlined) == pytest.approx(0.5, abs=0.015)
    assert np.median(cornered) > 0.54


def test_box_targets_carry_each_cells_box():
    # two overlapping boxes (pixel XYXY in a 64 px frame, stride 8): the smaller one owns the
    # cells they share, and every marked cell carries its box's corners in cells
    big, small = [8.0, 8.0, 56.0, 56.0], [24.0, 24.0, 40.0, 40.0]
    target, has_box = render_box_targets(torch.tensor([big, small]), SIZE, 8, regression=True)
    assert has_box and target.shape == (5, 8, 8)
    assert target[1:, 2, 2].tolist() == [1.0, 1.0, 7.0, 7.0]  # only in the big box
    assert target[1:, 3, 3].tolist() == [3.0, 3.0, 5.0, 5.0]  # in both: the small one
    assert target[1:][:, target[0] == 0].abs().sum() == 0  # unmarked cells carry nothing
    plain, _ = render_box_targets(torch.tensor([big]), SIZE, 8)
    assert plain.shape == (1, 8, 8)


def test_gaussian_targets_peak_at_the_box_centre():
    box = torch.tensor([[8.0, 16.0, 56.0, 48.0]])  # cells 1..7 x 2..6, centre cell (4, 4)
    hard, _ = render_box_targets(box, SIZE, 8, regression=True)
    soft, has_box = render_box_targets(box, SIZE, 8, regression=True, kind="gaussian")
    assert has_box
    assert torch.equal(soft[0] > 0, hard[0] > 0)  # same support: the box's cells
    torch.testing.assert_close(soft[1:], hard[1:])  # same box corners to regress
    assert soft[0, 4, 4] == 1.0 and soft[0].max() == 1.0
    assert soft[0, 4, 1] < soft[0, 4, 3] < soft[0, 4, 4]  # falls off towards the edges
    # cell (4, 1): centre (12, 36) px, box centre (32, 32), sigma (12, 8) px
    edge = math.exp(-0.5 * (((12 - 32) / 12) ** 2 + ((36 - 32) / 8) ** 2))
    assert float(soft[0, 4, 1]) == pytest.approx(edge, rel=1e-4)
    with pytest.raises(ValueError, match="loc target"):
        render_box_targets(box, SIZE, 8, kind="disk")


def test_box_loss_weights_cells_by_their_map_target():
    box = torch.tensor([[8.0, 16.0, 56.0, 48.0]])
    soft, _ = render_box_targets(box, SIZE, 8, regression=True, kind="gaussian")
    hard, _ = render_box_targets(box, SIZE, 8, regression=True)
    # a box branch right at the centre cell and wrong one cell from the edge
    raw = torch.from_numpy(_head_output([1.0, 2.0, 7.0, 6.0], (4, 4)))[None]
    raw[0, 1:, 4, 1] = torch.log(torch.tensor([0.1, 0.1, 0.1, 0.1]))
    raw[:, 0] = 0.0
    valid = torch.ones(1)
    # the wrong cell weighs less under the Gaussian target, so the box part of the loss is lower
    assert localization_loss(raw, soft[None], valid, pos_weight=1.0) < localization_loss(
        raw, hard[None], valid, pos_weight=1.0
    )


def test_config_takes_the_loc_target():
    from bonefrac.config import load_config

    cfg = load_config("configs/lite0_loc.yaml", ["train.loc_target=gaussian"])
    assert cfg.train.loc_target == "gaussian"
    assert load_config("configs/lite0_loc.yaml").train.loc_target == "box"
    with pytest.raises(ConfigError):
        load_config("configs/lite0_loc.yaml", ["train.loc_target=disk"])


def _head_output(box_cells: list[float], peak: tuple[int, int], cells: int = 8) -> np.ndarray:
    """A (5, cells, cells) head output: one map peak at ``peak`` (row, col) and, everywhere, the
    log distances from each cell's centre to the XYXY ``box_cells`` edges (floored at 0.05)."""
    raw = np.full((5, cells, cells), -6.0, np.float32)
    raw[0][peak] = 3.0
    centres = np.arange(cells) + 0.5
    x0, y0, x1, y1 = box_cells
    raw[1] = np.log(np.maximum(centres[None, :] - x0, 0.05))
    raw[2] = np.log(np.maximum(centres[:, None] - y0, 0.05))
    raw[3] = np.log(np.maximum(x1 - centres[None, :], 0.05))
    raw[4] = np.log(np.maximum(y1 - centres[:, None], 0.05))
    return raw


@pytest.mark.parametrize("size_wh", [(200, 100), (90, 160)])
def test_regressed_box_decodes_back_to_original_coordinates(size_wh):
    box = [0.3, 0.6, 0.2, 0.25]
    x0, y0, x1, y1 = (v / 8 for v in boxes_to_letterbox([box], size_wh, SIZE)[0].tolist())
    peak = (int((y0 + y1) / 2), int((x0 + x1) / 2))
    raw = _head_output([x0, y0, x1, y1], peak)
    torch.testing.assert_close(  # the head's layout: cell centre +- exp(log distance)
        cell_boxes(torch.from_numpy(raw)[None])[0, :, peak[0], peak[1]],
        torch.tensor([x0, y0, x1, y1]),
    )
    prob = upsample_maps(raw[None], SIZE)[0]
    (got,) = predicted_boxes(prob, size_wh, 0.5, raw)
    assert got[:4] == pytest.approx(box, abs=1e-3)  # exact: no blob outline involved
    assert got[4] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-3)
    assert predicted_boxes(prob, size_wh, 0.99, raw) == []  # below the threshold: no box


def test_peaks_in_the_letterbox_padding_give_no_box():
    size_wh = (200, 100)  # letterboxed: rows above 16 px and below 48 px are padding
    raw = _head_output([1.0, 0.0, 3.0, 1.0], (0, 2))  # a peak in the top padding row
    assert predicted_boxes(upsample_maps(raw[None], SIZE)[0], size_wh, 0.5, raw) == []


def test_box_loss_pulls_the_cells_box_to_the_true_one():
    target, _ = render_box_targets(
        torch.tensor([[16.0, 16.0, 40.0, 32.0]]), SIZE, 8, regression=True
    )
    target = target[None]
    valid = torch.ones(1)
    right = torch.from_numpy(_head_output([2.0, 2.0, 5.0, 4.0], (3, 3)))[None]
    wrong = torch.from_numpy(_head_output([0.0, 0.0, 8.0, 8.0], (3, 3)))[None]
    right[:, 0], wrong[:, 0] = target[:, 0] * 8 - 4, target[:, 0] * 8 - 4  # the same map
    assert localization_loss(right, target, valid) < localization_loss(wrong, target, valid) - 0.3
    maps = wrong.clone().requires_grad_(True)
    localization_loss(maps, target, valid).backward()
    unmarked = target[0, 0] == 0
    assert maps.grad[0, 1:][:, unmarked].abs().sum() == 0  # boxes are learned on marked cells
    assert maps.grad[0, 1:][:, ~unmarked].abs().sum() > 0
    maps.grad = None
    localization_loss(maps, target, torch.zeros(1)).backward()  # a masked image teaches nothing
    assert maps.grad.abs().sum() == 0


def test_score_fusion_is_fitted_on_val_and_kept_only_when_it_ranks_no_worse():
    from bonefrac.training.fit import MIN_FUSION_CLASS, _score_fusion

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    logits = y + rng.normal(0, 1.0, len(y))  # a weak class logit ...
    maps = rng.normal(-3, 0.5, (len(y), 1, 4, 4))
    maps[y == 1, 0, 1, 1] += 3.0  # ... and a map that peaks on the positives
    fusion = _score_fusion((logits, maps), y)
    assert fusion is not None and fusion["map_weight"] > 0
    assert fusion["val_roc_auc"] >= fusion["val_roc_auc_logit_alone"]
    few = y.copy()
    few[MIN_FUSION_CLASS - 1 :] = 0  # too few positives to fit three weights
    assert _score_fusion((logits, maps), few) is None
