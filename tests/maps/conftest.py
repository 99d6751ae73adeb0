"""Map fixtures: a small CNN trained in seconds to find a bright mark.

The mark (a bright Gaussian spot, sigma 2.5 px, at a random place) is the "fracture"; its box
(10 x 10 px, the spot's +-2 sigma) is known, so a heatmap's peak can be checked against it. A
smooth spot rather than a hard-edged square: a CNN finds a square by its edges and its CAM then
peaks a few pixels outside the square, which tests the mark's shape rather than the CAM code.
The network is a 2-stage SimpleCNN (16 x 16 CAM at 64 px, receptive field ~18 px) wrapped in
the project's FractureClassifier, trained with a plain loop (no Lightning, one thread: on two
busy cores that is several times faster than two threads) in a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bonefrac.data.transforms import to_input
from bonefrac.models.classifier import FractureClassifier
from bonefrac.models.simple_cnn import SimpleCNN

SIZE = 64
MARK = 10  # box side: the spot's +-2 sigma
SIGMA = 2.5
MEAN = STD = (0.5, 0.5, 0.5)


@dataclass
class MarkData:
    images: np.ndarray  # uint8 (N, SIZE, SIZE)
    labels: np.ndarray  # (N,)
    boxes: list  # per image: [] or [[cx, cy, w, h]] normalised

    def inputs(self, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        arr = self.images if idx is None else self.images[idx]
        return to_input(torch.from_numpy(np.ascontiguousarray(arr))[:, None], MEAN, STD)


def make_marks(n: int, seed: int, pos_rate: float = 0.5) -> MarkData:
    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * SIZE
        blob = np.exp(-(((yy - cy) / (0.35 * SIZE)) ** 2 + ((xx - cx) / (0.2 * SIZE)) ** 2))
        img = 40 + 60 * blob + rng.normal(0, 12, (SIZE, SIZE))
        positive = i < round(n * pos_rate)
        box: list = []
        if positive:
            mx, my = rng.uniform(MARK, SIZE - MARK, 2)
            img += 170 * np.exp(-((xx + 0.5 - mx) ** 2 + (yy + 0.5 - my) ** 2) / (2 * SIGMA**2))
            box = [[mx / SIZE, my / SIZE, MARK / SIZE, MARK / SIZE]]
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(int(positive))
        boxes.append(box)
    return MarkData(np.stack(images), np.array(labels), boxes)


def small_classifier(seed: int = 0, widths: tuple[int, ...] = (8, 16)) -> FractureClassifier:
    torch.manual_seed(seed)
    net = SimpleCNN(widths=widths)
    stages = list(net.stages)
    return FractureClassifier(net, net.num_features, stages, stages[-1], dropout=0.0)


@pytest.fixture(scope="session")
def mark_model() -> FractureClassifier:
    """Trained to separate the marks (6 epochs of 160 images)."""
    data = make_marks(160, seed=1)
    model = small_classifier(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_all = data.inputs()
    y_all = torch.from_numpy(data.labels).float()
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(6):
            model.train()
            for idx in torch.randperm(len(x_all), generator=gen).split(16):
                logits = model(x_all[idx])[:, 0]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_all[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


@pytest.fixture(scope="session")
def mark_test() -> MarkData:
    return make_marks(40, seed=2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a busy 2-core machine run several times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
