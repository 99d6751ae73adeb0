"""bench/localize.py on fake run directories (no training)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from bonefrac.errors import ConfigError
from bonefrac.rundir import RunDir
from tests.evaluation.conftest import make_run
from tests.evaluation.locfake import add_localization

BENCH = Path(__file__).resolve().parents[2] / "bench" / "localize.py"


@pytest.fixture(scope="module")
def bench_mod():
    spec = importlib.util.spec_from_file_location("bench_localize", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_localize"] = mod
    spec.loader.exec_module(mod)
    return mod


def _runs(root: Path, seeds=(0, 1, 2)) -> tuple[list[Path], list[Path]]:
    """Per seed: a localising run and a classification-only run on the same test images
    (two sources); the classification-only run's logits are noisier."""
    loc, cls = [], []
    for s in seeds:
        a = make_run(root, f"loc{s}", seed=s)
        b = make_run(root, f"cls{s}", seed=s)
        for run, kind in ((a, "loc"), (b, "cls")):
            layout = RunDir.open(run)
            df = layout.read_predictions_raw("test")
            df["source"] = np.where(np.arange(len(df)) % 2 == 0, "fracatlas", "roboflow")
            if kind == "loc":
                df = add_localization(df, seed=s, quality="perfect", n_false=1)
                df.loc[df.index[::3], "map_peak"] = "[0.5, 0.5]"  # some misses
            else:
                rng = np.random.default_rng(s)
                df["logit"] = df["logit"].astype(float) + rng.normal(0, 2, len(df))
                df["prob"] = 1 / (1 + np.exp(-df["logit"]))
            layout.write_predictions("test", df)
        loc.append(a)
        cls.append(b)
    return loc, cls


def test_bench_prints_mean_sd_delong_and_sources(tmp_path, bench_mod, capsys):
    loc, cls = _runs(tmp_path)
    out = tmp_path / "bench.json"
    doc = bench_mod.main(["--loc", *map(str, loc), "--cls", *map(str, cls), "--json", str(out)])
    text = capsys.readouterr().out
    assert set(doc["per_group"]) == {"all", "source=fracatlas", "source=roboflow"}
    rows = doc["per_group"]["all"]
    assert len(rows) == 3
    for r in rows:
        assert r["ap50"] > 0.9 and 0.5 < r["hit_rate"] < 1.0
        assert r["ap50_boxed"] >= r["ap50"]
        assert r["box_w_ratio"] == pytest.approx(1.0) and r["box_h_ratio"] == pytest.approx(1.0)
        assert r["roc_auc_loc"] > r["roc_auc_cls"] and r["delong_diff"] > 0
        assert 0 <= r["delong_p"] <= 1
    for word in ("mean ± sd over 3 seed(s)", "always the image centre", "area-based chance",
                 "AP50", "FROC sensitivity @ 2 FP/image", "Paired DeLong", "source=roboflow"):  # fmt: skip
        assert word in text, word
    assert json.loads(out.read_text())["per_group"]["all"][0]["n_images"] == 400


def test_bench_refuses_unpaired_or_classification_runs(tmp_path, bench_mod):
    loc, cls = _runs(tmp_path, seeds=(0,))
    with pytest.raises(ConfigError, match="same seed order"):
        bench_mod.bench(loc, cls + cls)
    with pytest.raises(ConfigError, match="localising run"):
        bench_mod.bench(cls, loc)
    only = bench_mod.bench(loc, [])
    assert "roc_auc_cls" not in only["all"][0] and "roc_auc_loc" in only["all"][0]


def test_box_size_ratios_read_the_box_found_on_each_true_box(bench_mod):
    from bonefrac.evaluation.localization_metrics import LocInputs

    truth = [[[0.5, 0.5, 0.2, 0.1]], [[0.3, 0.3, 0.1, 0.1]], []]
    preds = [
        [[0.52, 0.5, 0.3, 0.2, 0.9], [0.5, 0.5, 0.1, 0.1, 0.2]],  # the best-scored one counts
        [[0.7, 0.7, 0.1, 0.1, 0.9]],  # its centre is outside: not found
        [[0.5, 0.5, 0.1, 0.1, 0.9]],
    ]
    inputs = LocInputs(["a", "b", "c"], truth, [(100, 100)] * 3, preds)
    assert bench_mod.box_size_ratios(inputs) == pytest.approx((1.5, 2.0))
    missed = LocInputs(["b"], truth[1:2], [(100, 100)], preds[1:2])
    assert all(math.isnan(v) for v in bench_mod.box_size_ratios(missed))
