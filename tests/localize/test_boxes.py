"""Localisation without training: box targets through letterbox + augmentation, the map's peak
back to the original image, the box threshold, bad box rows, the score fusion."""

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
    BoxKeepingResizedCrop,
    box_outlines,
    box_targets,
    boxes_to_letterbox,
    letterbox,
    outline_boxes,
    train_augment,
)
from bonefrac.errors import ConfigError, ModelError
from bonefrac.inference.box_decoding import choose_box_threshold, crop_map, map_peak
from bonefrac.maps.cam import explainer
from bonefrac.models.registry import build_model

SIZE = 64


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
    target, count = box_targets(flipped, SIZE)
    assert count == 1
    # the target box is where the flipped mark is
    tx0, ty0, tx1, ty1 = (round(v) for v in target[0].tolist())
    assert img[0, ty0 + 1 : ty1 - 1, tx0 + 1 : tx1 - 1].float().mean() > 200


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


def test_dataset_survives_bad_box_rows(tmp_path):
    rows = []
    values = ["[[0.5, 0.5, 0, 0]]", "not json", "[[1.5, 1.5, 0.2, 0.2]]", "[[0.9, 0.5, 0.4, 0.2]]"]
    for i, value in enumerate(values):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 60), 80, np.uint8)).save(path)
        rows.append({"image_id": path.name, "path": str(path), "label": 1, "boxes": value})
    rows.append({"image_id": "neg", "path": str(path), "label": 0, "boxes": "[]"})
    ds = RadiographDataset(
        pd.DataFrame(rows), PreparedImageCache(SIZE), train_augment(SIZE, "medium"), boxes=True
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


def test_crops_keep_edge_boxes_whole_and_still_jitter_scale():
    """A box at the image's edge is never cut by the training crop: across draws its size
    after the crop is always its full size times the crop's zoom (no draw truncates it), and
    the zoom varies (the crop still jitters scale). Without boxes it is RandomResizedCrop."""
    from torchvision import tv_tensors

    xyxy = torch.tensor([[0.0, 20.0, 6.0, 44.0], [20.0, 30.0, 30.0, 64.0]])
    boxes = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(SIZE, SIZE))
    img = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    crop = BoxKeepingResizedCrop((SIZE, SIZE), scale=(0.7, 1.0), ratio=(0.85, 1.18))
    zooms = []
    for seed in range(200):
        torch.manual_seed(seed)
        params = crop.make_params([img, box_outlines(boxes)])
        torch.manual_seed(seed)
        out = outline_boxes(crop(img, box_outlines(boxes))[1], SIZE)
        zoom_x, zoom_y = SIZE / params["width"], SIZE / params["height"]
        sizes = torch.stack([(out[:, 2] - out[:, 0]) / zoom_x, (out[:, 3] - out[:, 1]) / zoom_y], 1)
        torch.testing.assert_close(sizes, xyxy[:, 2:] - xyxy[:, :2], atol=1e-3, rtol=0)
        zooms.append(zoom_x)
    assert max(zooms) > 1.1  # boxes at two edges still leave room to zoom in
    plain = v2.RandomResizedCrop((SIZE, SIZE), scale=(0.7, 1.0), ratio=(0.85, 1.18))
    empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(SIZE, SIZE))
    for seed in range(20):
        torch.manual_seed(seed)
        mine = crop.make_params([img, empty])
        torch.manual_seed(seed)
        assert mine == plain.make_params([img, empty])


def test_score_fusion_is_fitted_on_val_and_kept_only_when_it_ranks_no_worse():
    from bonefrac.training.fit import MIN_FUSION_CLASS, _score_fusion

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    logits = y + rng.normal(0, 1.0, len(y))  # a weak class logit ...
    maps = rng.normal(-3, 0.5, (len(y), 16, 6)).astype(np.float32)  # packed detector outputs
    maps[y == 1, 5, :2] += 4.0  # ... and a detector that fires on the positives
    fusion = _score_fusion((logits, maps), y)
    assert fusion is not None and fusion["map_weight"] > 0
    assert fusion["val_roc_auc"] >= fusion["val_roc_auc_logit_alone"]
    few = y.copy()
    few[MIN_FUSION_CLASS - 1 :] = 0  # too few positives to fit three weights
    assert _score_fusion((logits, maps), few) is None
