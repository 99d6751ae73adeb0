"""Search-space parsing and validation, objectives (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bonefrac.config import load_config
from bonefrac.errors import ConfigError
from bonefrac.tuning.space import choice_labels, load_space, parse_space
from bonefrac.tuning.study import Objective, sensitivity_at_specificity

REPO = Path(__file__).resolve().parents[2]
BASE = load_config(None, ["model.name=simple_cnn", "model.pretrained=none"])


def _space(entry: dict, path: str = "train.lr") -> dict:
    return {"params": {path: entry}}


@pytest.mark.parametrize(
    ("raw", "fixed", "expected"),
    [
        (
            _space({"type": "float", "low": 1e-4, "high": 1e-2}, "train.lrr"),
            [],
            "did you mean 'train.lr'",
        ),
        (
            _space({"type": "float", "low": 1e-4, "high": 1e-2}, "trian.lr"),
            [],
            "did you mean 'train'",
        ),
        (_space({"type": "float", "low": 1e-2, "high": 1e-4}), [], "must be below high"),
        (
            _space({"type": "float", "low": 0, "high": 1e-2, "log": True}),
            [],
            "log scale needs low > 0",
        ),
        (
            _space({"type": "float", "low": 0, "high": 1e-2}),
            [],
            "train.lr: Input should be greater than 0",
        ),
        (_space({"type": "float", "lo": 1e-4, "high": 1e-2}), [], "lo: Extra inputs"),
        (_space({"type": "floaty", "low": 1e-4, "high": 1e-2}), [], "type"),
        (_space({"type": "float", "low": 64, "high": 128}, "data.image_size"), [], "valid integer"),
        (
            _space({"type": "categorical", "choices": ["none", "weightd"]}, "data.sampler"),
            [],
            "weightd",
        ),
        (
            _space({"type": "categorical", "choices": ["none", "none"]}, "data.sampler"),
            [],
            "duplicates",
        ),
        (_space({"type": "categorical", "choices": ["a"]}, "model"), [], "is a section"),
        (
            _space({"type": "categorical", "choices": [{"nme": "simple_cnn"}]}, "model"),
            [],
            "model.nme",
        ),
        (
            _space({"type": "categorical", "choices": ["no_such_net"]}, "model.name"),
            [],
            "no_such_net",
        ),
        (_space({"type": "categorical", "choices": ["val_f1"]}, "tune.objective"), [], "tune.*"),
        (_space({"type": "int", "low": 1, "high": 2.5}, "train.epochs"), [], "whole-number"),
        (_space({"type": "float", "low": 1e-4, "high": 1e-2}), ["train.lr=0.1"], "both by --set"),
        ({"params": {}}, [], "at least 1"),
        ({"prams": {}}, [], "prams"),
    ],
)
def test_invalid_space_is_a_config_error(raw: dict, fixed: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match="space.yaml") as info:
        parse_space(raw, "space.yaml").validate_against(BASE, fixed)
    assert expected in str(info.value)


def test_simple_cnn_with_imagenet_is_rejected_before_training() -> None:
    space = parse_space(_space({"type": "categorical", "choices": ["simple_cnn"]}, "model.name"))
    base = load_config(None, ["model.name=efficientnet_b0", "model.pretrained=none"])
    base = base.model_copy(
        update={"model": base.model.model_copy(update={"pretrained": "imagenet"})}
    )
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        space.validate_against(base, check_models=True)


def test_section_choices_set_fields_together() -> None:
    raw = _space(
        {
            "type": "categorical",
            "choices": [
                {"name": "simple_cnn", "pretrained": "none"},
                {"name": "efficientnet_b0", "pretrained": "none"},
            ],
        },
        "model",
    )
    space = parse_space(raw)
    space.validate_against(BASE, ["model.freeze=backbone"])
    labels = choice_labels(space.params["model"])
    assert labels[0] == '{"name":"simple_cnn","pretrained":"none"}'
    cfg = space.apply(BASE, {"model": {"name": "efficientnet_b0", "pretrained": "none"}})
    assert cfg.model.name == "efficientnet_b0" and cfg.model.dropout == BASE.model.dropout


def test_ready_space_file_is_valid() -> None:
    space = load_space(REPO / "configs" / "space.yaml")
    expected = {"train.lr", "train.weight_decay", "data.batch_size", "model.freeze",
                "data.sampler", "train.pos_weight", "data.augment", "data.image_size", "model"}  # fmt: skip
    assert expected <= set(space.params)
    space.validate_against(load_config(None), check_models=False)


def test_missing_space_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")


def test_objectives() -> None:
    assert Objective.parse("val_roc_auc").monitor == "val_roc_auc"
    assert Objective.parse("VAL_F1").monitor == "val_f1"
    sens = Objective.parse("sens_at_spec:0.9")
    assert (sens.name, sens.target, sens.monitor) == ("sens_at_spec", 0.9, "val_roc_auc")
    for bad in ("accuracy", "sens_at_spec:1.5", "sens_at_spec:x"):
        with pytest.raises(ConfigError):
            Objective.parse(bad)
    with pytest.raises(ConfigError, match="tune.objective"):
        load_config(None, ["tune.objective=accuracy"])
    assert load_config(None, ["tune.objective=sens_at_spec:0.90"]).tune.objective == (
        "sens_at_spec:0.9"
    )


def test_sensitivity_at_specificity() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.7, 0.9, 0.95])
    # specificity >= 0.75 allows thresholds above 0.3 -> 4 of 4 positives above 0.3
    assert sensitivity_at_specificity(y, p, 0.75) == 1.0
    # specificity 1.0 needs threshold above 0.8 -> 2 of 4 positives
    assert sensitivity_at_specificity(y, p, 1.0) == 0.5
    assert np.isnan(sensitivity_at_specificity(np.zeros(4), p[:4], 0.9))
