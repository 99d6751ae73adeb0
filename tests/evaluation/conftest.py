"""A fake run directory built from synthetic arrays (no model, no images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bonefrac.rundir import FORMAT_VERSION, RunDir


def make_predictions(
    n: int = 300, seed: int = 0, separation: float = 1.5, scale: float = 1.0, prevalence=0.35
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    logit = scale * (rng.normal(0, 1, n) + separation * (2 * y - 1))
    return pd.DataFrame(
        {
            "image_id": [f"img_{i:04d}" for i in range(n)],
            "path": [f"/data/img_{i:04d}.jpg" for i in range(n)],
            "label": y,
            "logit": logit,
            "prob": 1 / (1 + np.exp(-logit)),
            "region": rng.choice(["hand", "leg", "hip"], n),
            "view": rng.choice(["frontal", "lateral"], n),
            "source": "synthetic",
        }
    )


def make_run(
    root: Path,
    name: str = "run",
    seed: int = 0,
    scale: float = 1.0,
    separation: float = 1.5,
    extra_model: dict | None = None,
) -> Path:
    run = root / name
    model = {
        "format_version": FORMAT_VERSION,
        "architecture": "simple_cnn",
        "image_size": 224,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "class_names": ["not_fractured", "fractured"],
        "threshold": 0.5,
        "threshold_criterion": "default",
        "temperature": 1.0,
        "pretrained": "none",
        "versions": {"torch": "x"},
        "manifest_sha1": "abc123",
        "created": "2025-01-01T00:00:00+00:00",
        "custom_key": {"keep": True},
    }
    model.update(extra_model or {})
    layout = RunDir.create(run)
    layout.write_meta(model)
    layout.write_predictions("val", make_predictions(300, 100, separation, scale))
    test = make_predictions(400, 200 + seed, separation, scale)
    test["image_id"] = [f"t_{i:04d}" for i in range(len(test))]
    layout.write_predictions("test", test)
    layout.config_path.write_text("model:\n  name: simple_cnn\ntrain:\n  epochs: 2\n")
    pd.DataFrame(
        {
            "epoch": [0, 1],
            "train_loss": [0.7, 0.5],
            "val_loss": [0.65, 0.55],
            "val_roc_auc": [0.7, 0.8],
            "val_f1": [0.5, 0.6],
            "val_sensitivity": [0.5, 0.6],
            "val_specificity": [0.7, 0.8],
            "lr": [1e-3, 1e-3],
        }
    ).to_csv(layout.history_path, index=False)
    return run


def add_explain(run: Path) -> None:
    from PIL import Image

    (run / "explain").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 32), (200, 10, 10)).save(run / "explain" / "grid.png")
    Image.new("RGB", (16, 16), (10, 200, 10)).save(run / "explain" / "img_0001.png")
    (run / "explain" / "localization.json").write_text(
        json.dumps({"n_scored": 10, "hit_rate": 0.7, "energy_in_box": 0.42})
    )


@pytest.fixture()
def fake_run(tmp_path: Path) -> Path:
    return make_run(tmp_path)
