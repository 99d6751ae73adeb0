"""The fracture detector (FPN + torchvision's FCOS head): output layout, the map it draws,
valid targets for awkward boxes, decoding back to the original image, a tiny model that learns
boxes, AP50 of perfect boxes and the refusal of old-format runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from bonefrac.data.transforms import (
    MAX_TARGET_BOXES,
    box_outlines,
    box_targets,
    boxes_to_letterbox,
    letterbox_geometry,
    outline_boxes,
    target_boxes,
    train_augment,
)
from bonefrac.errors import ModelError, RunDirError
from bonefrac.evaluation.localization_metrics import ap50
from bonefrac.inference.box_decoding import decode_box_sets, decode_boxes
from bonefrac.models.detector import (
    level_anchors,
    level_sizes,
    location_scores,
    map_peak_logit,
    score_map,
)
from bonefrac.models.registry import build_model

SIZE = 64


def _locations(size: int, strides: tuple[int, ...]) -> int:
    return sum(n * n for n in level_sizes(size, strides))


@pytest.mark.parametrize(
    ("name", "levels"),
    [
        ("simple_cnn", (8, 16)),
        ("efficientnet_lite0", (8, 16, 32)),
        ("efficientnet_lite0", (4, 8, 16, 32)),
    ],
)
def test_packed_output_has_one_row_per_location_of_every_level(name, levels):
    model = build_model(name, localize=True, loc_levels=levels).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logit, packed = model.forward_with_map(x)
        plain = model(x)
    assert packed.shape == (2, _locations(SIZE, levels), 6)
    torch.testing.assert_close(logit, plain)  # one backbone pass gives the same logit
    assert model.loc_head.strides == levels
    assert score_map(packed, SIZE, levels).shape == (2, 1, SIZE // levels[0], SIZE // levels[0])


def test_a_level_the_backbone_lacks_is_refused_naming_what_it_has():
    with pytest.raises(ModelError, match=r"strides \[4, 8, 16\]"):
        build_model("simple_cnn", localize=True, loc_levels=(8, 16, 64))


def test_one_level_past_the_backbone_comes_from_the_fpn():
    """simple_cnn's features end at stride 16: the default levels' 32 is the FPN's extra one."""
    model = build_model("simple_cnn", localize=True).eval()
    with torch.no_grad():
        _, packed = model.forward_with_map(torch.randn(1, 3, SIZE, SIZE))
    assert model.loc_head.strides == (8, 16, 32)
    assert packed.shape == (1, _locations(SIZE, (8, 16, 32)), 6)


def test_config_refuses_a_size_the_coarsest_level_does_not_divide():
    from bonefrac.config import load_config
    from bonefrac.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of the detector's coarsest stride 32"):
        load_config("configs/lite0_loc.yaml", ["data.image_size=400"])
    assert load_config("configs/lite0_loc.yaml").model.loc_levels == [8, 16, 32]


def test_anchors_sit_on_cell_centres():
    anchors = level_anchors(SIZE, (8, 16))
    assert anchors.shape == (_locations(SIZE, (8, 16)), 4)
    torch.testing.assert_close(anchors[0], torch.tensor([0.0, 0.0, 8.0, 8.0]))
    torch.testing.assert_close(anchors[64], torch.tensor([0.0, 0.0, 16.0, 16.0]))  # level 16


def test_map_is_the_best_score_over_levels_and_its_peak_feeds_the_fusion():
    packed = torch.full((1, _locations(SIZE, (8, 16)), 6), -8.0)
    packed[0, 64 + 5, :2] = 4.0  # level 16, row 1, column 1: covers finer cells (2..3, 2..3)
    m = torch.sigmoid(score_map(packed, SIZE, (8, 16)))[0, 0]
    expected = float(location_scores(packed).max())
    assert torch.allclose(m[2:4, 2:4], torch.full((2, 2), expected))
    assert float(m.max()) == pytest.approx(expected) and float(m[0, 0]) < 1e-3
    assert float(torch.sigmoid(map_peak_logit(packed))) == pytest.approx(expected, rel=1e-5)


def _packed_for(box_xyxy: list[float], size: int, strides: tuple[int, ...]) -> np.ndarray:
    """A packed output whose only firing location is the finest cell holding the box's centre,
    regressing that box."""
    packed = np.full((_locations(size, strides), 6), -8.0, np.float32)
    packed[:, 2:] = 0.0
    anchors = level_anchors(size, strides).numpy()
    cx, cy = (box_xyxy[0] + box_xyxy[2]) / 2, (box_xyxy[1] + box_xyxy[3]) / 2
    n = size // strides[0]
    i = int(cy // strides[0]) * n + int(cx // strides[0])
    ax, ay = (anchors[i, :2] + anchors[i, 2:]) / 2
    s = strides[0]
    packed[i] = [
        3.0,
        3.0,
        (ax - box_xyxy[0]) / s,
        (ay - box_xyxy[1]) / s,
        (box_xyxy[2] - ax) / s,
        (box_xyxy[3] - ay) / s,
    ]
    return packed


@pytest.mark.parametrize("size_wh", [(200, 100), (90, 160)])
def test_boxes_decode_back_to_the_original_image(size_wh):
    box = [0.3, 0.6, 0.2, 0.25]
    xyxy = boxes_to_letterbox([box], size_wh, SIZE)[0].tolist()
    packed = _packed_for(xyxy, SIZE, (8, 16))
    (got,) = decode_boxes(packed, size_wh, SIZE, (8, 16), 0.5)
    assert got[:4] == pytest.approx(box, abs=1e-3)
    assert got[4] == pytest.approx(float(torch.sigmoid(torch.tensor(3.0))), abs=1e-3)
    assert decode_boxes(packed, size_wh, SIZE, (8, 16), 0.99) == []  # under the threshold


def test_one_post_processing_gives_every_cut_its_own_call_would():
    """The predictor and the predictions CSV take the shown boxes, the candidates and the best
    box from one FCOS post-processing run; each cut equals decoding at its threshold alone."""
    torch.manual_seed(0)
    anchors = sum(n * n for n in level_sizes(SIZE, (8, 16)))
    for _ in range(5):
        packed = torch.randn(anchors, 6) * 2
        packed[:, 2:] = packed[:, 2:].abs()  # distances from the location are non-negative
        cuts = [(0.5, 5), (0.05, 10), (1e-4, 1)]
        got = decode_box_sets(packed.numpy(), (200, 100), SIZE, (8, 16), cuts)
        assert got == [
            decode_boxes(packed.numpy(), (200, 100), SIZE, (8, 16), t, n) for t, n in cuts
        ]
        assert len(got[1]) == 10 and got[2] == got[1][:1]  # random heads leave many candidates


def test_a_box_centred_on_the_letterbox_padding_is_dropped():
    size_wh = (200, 100)  # letterboxed into rows 16..48 of 64
    _, _, top, _, _ = letterbox_geometry(*size_wh, SIZE)
    assert top == 16
    packed = _packed_for([20.0, 2.0, 30.0, 10.0], SIZE, (8, 16))
    assert decode_boxes(packed, size_wh, SIZE, (8, 16), 0.5) == []


def test_awkward_boxes_give_valid_targets_and_a_finite_loss():
    """Six boxes, boxes on the edge, a sliver of a box after letterboxing and a negative: the
    targets stay inside the frame with positive area, and FCOS's loss stays finite."""
    torch.manual_seed(0)
    original = (1200, 300)  # a wide image: letterboxed to a quarter of the frame's height
    boxes = [[0.1 * i + 0.05, 0.5, 0.05, 0.2] for i in range(6)]
    boxes += [[0.999, 0.5, 0.002, 0.01], [0.0, 0.0, 0.01, 0.01]]  # at the edges, a few pixels
    letterboxed = boxes_to_letterbox(boxes, original, SIZE)
    aug = train_augment(SIZE, "medium")
    image = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    padded = []
    for _ in range(4):
        _, points = aug(image, box_outlines(letterboxed))
        target, count = box_targets(outline_boxes(points, SIZE), SIZE)
        assert target.shape == (MAX_TARGET_BOXES, 4) and count >= 1
        real = target[:count]
        assert (real[:, 2:] > real[:, :2]).all() and real.min() >= 0 and real.max() <= SIZE
        padded.append(target)
    batch = target_boxes(torch.stack(padded))
    model = build_model("efficientnet_lite0", localize=True).train()
    _, losses = model.detector_loss(torch.randn(5, 3, SIZE, SIZE), [*batch, torch.zeros(0, 4)])
    total = sum(losses.values())
    assert torch.isfinite(total).item() and total.item() > 0
    total.backward()
    grads = [p.grad for p in model.loc_head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_images_without_usable_boxes_train_the_logit_only():
    model = build_model("simple_cnn", localize=True, loc_levels=(8, 16)).train()
    logit, losses = model.detector_loss(torch.randn(2, 3, SIZE, SIZE), [None, None])
    assert logit.shape == (2, 1) and all(v.item() == 0 for v in losses.values())


def _two_marks(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64 px image with a small (8 x 8) and a large (20 x 14) bright mark, and their boxes."""
    image = torch.zeros(1, SIZE, SIZE)
    boxes = []
    for (w, h), (x_lo, x_hi) in (((8, 8), (2, 22)), ((20, 14), (30, 42))):
        x0 = int(rng.integers(x_lo, x_hi))
        y0 = int(rng.integers(2, SIZE - h - 2))
        image[0, y0 : y0 + h, x0 : x0 + w] = 1.0
        boxes.append([x0, y0, x0 + w, y0 + h])
    return image, torch.tensor(boxes, dtype=torch.float32)


class _TinyBackbone(torch.nn.Module):
    """Three stride-2 convolutions, then one more: features at strides 8 and 16."""

    def __init__(self) -> None:
        super().__init__()

        def down(i: int, o: int) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, 2, 1), torch.nn.ReLU())

        self.to8 = torch.nn.Sequential(down(1, 16), down(16, 32), down(32, 32))
        self.to16 = down(32, 32)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f8 = self.to8(x)
        return [f8, self.to16(f8)]


def test_a_tiny_model_learns_two_marks_of_different_sizes():
    """A tiny backbone under the detector finds a small and a large mark, each at IoU >= 0.5."""
    from bonefrac.models.detector import FractureDetector

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    backbone, detector = _TinyBackbone(), FractureDetector([32, 32], (8, 16))
    params = [*backbone.parameters(), *detector.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(300):
        pairs = [_two_marks(rng) for _ in range(8)]
        feats = backbone(torch.stack([p[0] for p in pairs]))
        losses = detector.loss(feats, [p[1] for p in pairs], SIZE)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    ious = []
    for _ in range(8):
        image, truth = _two_marks(rng)
        with torch.no_grad():
            packed = detector(backbone(image[None]))
        found = decode_boxes(packed[0].numpy(), (SIZE, SIZE), SIZE, (8, 16), 0.05)
        assert found, "no box at all"
        pred = torch.tensor(
            [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cx, cy, w, h, _ in found]
        )
        ious.append(box_iou(truth, pred * SIZE).max(dim=1).values)
    best = torch.stack(ious)  # (images, 2): the best IoU of the small and the large mark
    assert float(best[:, 0].median()) >= 0.5, best
    assert float(best[:, 1].median()) >= 0.5, best


def test_ap50_of_perfect_boxes_is_one():
    truth = [[[0.3, 0.4, 0.1, 0.1], [0.7, 0.6, 0.2, 0.1]], [], [[0.5, 0.5, 0.05, 0.3]]]
    preds = [[[*b, 0.9] for b in boxes] for boxes in truth]
    assert ap50(truth, preds) == pytest.approx(1.0)


def test_a_run_of_the_old_head_is_refused_with_a_retrain_line(loc_run, tmp_path):
    import shutil

    from bonefrac.rundir import RunDir

    run = tmp_path / "old"
    shutil.copytree(loc_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["format_version"] = 1
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match="retrain") as info:
        RunDir.open(run).meta()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size_wh", [(200, 100), (90, 160)])
def test_target_boxes_follow_the_mark_through_letterbox_flip_and_scale_jitter(size_wh):
    """On non-square images, through the training augmentation (crop and scale jitter, flip,
    rotation), the target box still holds the bright mark it was drawn around."""
    from PIL import Image

    from bonefrac.data.transforms import letterbox

    box = [0.4, 0.55, 0.3, 0.2]
    w, h = size_wh
    arr = np.zeros((h, w), np.uint8)
    arr[
        round((box[1] - box[3] / 2) * h) : round((box[1] + box[3] / 2) * h),
        round((box[0] - box[2] / 2) * w) : round((box[0] + box[2] / 2) * w),
    ] = 255
    image = torch.from_numpy(letterbox(Image.fromarray(arr), SIZE))[None]
    boxes = boxes_to_letterbox([box], size_wh, SIZE)
    aug = train_augment(SIZE, "medium")
    for seed in range(20):
        torch.manual_seed(seed)
        out, points = aug(image, box_outlines(boxes))
        target, count = box_targets(outline_boxes(points, SIZE), SIZE)
        bright = out[0] > 128
        if not bright.any():
            continue  # the crop left the mark out
        x0, y0, x1, y1 = target[0].tolist()
        assert count == 1
        ys, xs = torch.nonzero(bright, as_tuple=True)
        inside = (
            (xs + 0.5 >= x0 - 1)
            & (xs + 0.5 <= x1 + 1)
            & (ys + 0.5 >= y0 - 1)
            & (ys + 0.5 <= y1 + 1)
        )
        assert float(inside.float().mean()) >= 0.95, (seed, target[0])
