"""missing_safeguards: the one list of what a run lacks before it is safe to use."""

from __future__ import annotations

import logging

from bonefrac.rundir import FORMAT_VERSION, ModelMeta, missing_safeguards, warn_missing_safeguards

BARE = {
    "format_version": FORMAT_VERSION,
    "architecture": "simple_cnn",
    "image_size": 64,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
    "threshold": 0.5,
    "threshold_criterion": "default",
}
READY = {
    **BARE,
    "threshold": 0.42,
    "threshold_criterion": "f1",
    "temperature": 1.3,
    "calibration": {"method": "temperature scaling", "temperature": 1.3},
    "ood": {"method": "energy", "cutoff": 1.0},
    "refer": {"score": "margin", "coverage": 0.9, "cutoff": 0.8, "threshold": 0.42,
              "temperature": 1.3},
}  # fmt: skip


def test_a_bare_run_lacks_all_four_in_command_order() -> None:
    missing = missing_safeguards(ModelMeta.parse(BARE))
    assert [m.name for m in missing] == ["threshold", "calibration", "ood", "refer"]
    assert [m.command for m in missing] == [
        "bonefrac threshold RUN --criterion specificity:0.95",
        "bonefrac calibrate RUN",
        "bonefrac ood RUN",
        "bonefrac threshold RUN --rule-out-sensitivity 0.95",
    ]
    assert "0.5" in missing[0].detail  # says which threshold is in use
    assert set(missing[0].as_dict()) == {"name", "detail", "command"}


def test_a_ready_run_lacks_none_and_each_record_counts_alone() -> None:
    assert missing_safeguards(ModelMeta.parse(READY)) == []
    old = {k: v for k, v in BARE.items() if k != "threshold_criterion"}  # older runs: untuned
    assert missing_safeguards(ModelMeta.parse(old))[0].name == "threshold"
    only_ood = {**BARE, "ood": READY["ood"]}
    assert [m.name for m in missing_safeguards(ModelMeta.parse(only_ood))] == [
        "threshold",
        "calibration",
        "refer",
    ]


def test_commands_name_the_run_quoted_and_warnings_are_one_per_safeguard(caplog) -> None:
    meta = ModelMeta.parse({**READY, "calibration": None})
    assert missing_safeguards(meta, "runs/my run")[0].command == "bonefrac calibrate 'runs/my run'"
    with caplog.at_level(logging.WARNING, logger="bonefrac.rundir.meta"):
        warn_missing_safeguards(meta, "runs/a")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the one missing safeguard, then how retraining fits all four
    assert "bonefrac calibrate runs/a" in lines[0] and "--no-deploy" in lines[1]
