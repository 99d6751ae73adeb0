from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.errors import DataError
from bonefrac.evaluation.compare import compare_runs, delong_test
from bonefrac.fileio import write_csv
from tests.evaluation.conftest import make_run


def _delong_bruteforce(y, a, b):
    """Textbook DeLong (1988) with O(m n) placement values."""
    y = np.asarray(y)

    def comps(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    auc_a, va10, va01 = comps(np.asarray(a))
    auc_b, vb10, vb01 = comps(np.asarray(b))
    m, n = len(va10), len(va01)
    s10 = np.cov(np.vstack([va10, vb10]))
    s01 = np.cov(np.vstack([va01, vb01]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (auc_a - auc_b) / np.sqrt(var)
    return auc_a, auc_b, 2 * norm.sf(abs(z))


def test_delong_matches_bruteforce_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 150)
    a = np.round(y + rng.normal(0, 0.9, 150), 1)
    b = np.round(y + rng.normal(0, 1.3, 150) + 0.3 * a, 1)
    res = delong_test(y, a, b)
    auc_a, auc_b, p = _delong_bruteforce(y, a, b)
    assert res["auc_a"] == pytest.approx(auc_a)
    assert res["auc_b"] == pytest.approx(auc_b)
    assert res["p_value"] == pytest.approx(p, rel=1e-9)
    assert res["diff_ci_low"] < res["diff"] < res["diff_ci_high"]


def test_delong_known_value():
    # hand-checkable: 3 positives, 3 negatives
    y = [1, 1, 1, 0, 0, 0]
    a = [0.9, 0.8, 0.4, 0.5, 0.2, 0.1]  # AUC 8/9
    b = [0.6, 0.3, 0.7, 0.8, 0.2, 0.1]  # AUC 6/9
    res = delong_test(y, a, b)
    assert res["auc_a"] == pytest.approx(8 / 9)
    assert res["auc_b"] == pytest.approx(6 / 9)
    assert res["p_value"] == pytest.approx(_delong_bruteforce(y, a, b)[2])
    # by hand: placements a10=[1,1,2/3] a01=[2/3,1,1] b10=[2/3]*3 b01=[0,1,1]
    # var(diff) = (1/27)/3 + (1/27 + 1/3 - 2*1/9)/3 = 5/81, diff = 2/9 -> z = 2/sqrt(5)
    assert res["z"] == pytest.approx(2 / np.sqrt(5))
    assert res["se"] == pytest.approx(np.sqrt(5) / 9)
    assert res["p_value"] == pytest.approx(2 * norm.sf(2 / np.sqrt(5)))  # 0.3711


def test_delong_identical_predictions_p_is_one():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 100)
    p = rng.random(100)
    res = delong_test(y, p, p)
    assert res["p_value"] == 1.0 and res["diff"] == 0.0


def test_delong_clearly_different_models():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    good = y + rng.normal(0, 0.5, 500)
    bad = y + rng.normal(0, 3.0, 500)
    assert delong_test(y, good, bad)["p_value"] < 1e-6


def _runs(tmp_path):
    # the same test images (same seed) with different noise levels -> known ranking
    weak = make_run(tmp_path, "weak", separation=0.5)
    strong = make_run(tmp_path, "strong", separation=2.0)
    mid = make_run(tmp_path, "mid", separation=1.0)
    return weak, strong, mid


def test_compare_ranks_and_writes(tmp_path):
    weak, strong, mid = _runs(tmp_path)
    # shuffle one run's rows: the join is on image_id, not on row order
    test = pd.read_csv(mid / "predictions" / "test.csv").sample(frac=1, random_state=0)
    write_csv(mid / "predictions" / "test.csv", test)
    out = tmp_path / "cmp"
    res = compare_runs([weak, strong, mid], out_dir=out, n_boot=100)
    assert res.names == ["strong", "mid", "weak"]
    assert res.best["roc_auc"] == ["strong"]
    assert res.test["a"] == "strong" and res.test["b"] == "mid"
    assert 0 <= res.test["p_value"] <= 1
    md = (out / "compare.md").read_text()
    assert "| 1 | strong | **" in md and "DeLong" in md
    html = (out / "compare.html").read_text()
    assert "<b>" in html and "data:image/png;base64," in html
    data = json.loads((out / "compare.json").read_text())
    assert data["ranking"] == ["strong", "mid", "weak"]
    assert (out / "roc_overlay.png").stat().st_size > 1000


def test_compare_refuses_different_images(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b")
    test = pd.read_csv(b / "predictions" / "test.csv").iloc[:-5]
    write_csv(b / "predictions" / "test.csv", test)
    with pytest.raises(DataError, match="do not hold the same images"):
        compare_runs([a, b], out_dir=tmp_path / "o")


def test_cli_compare(tmp_path):
    weak, strong, _ = _runs(tmp_path)
    r = CliRunner().invoke(app, ["compare", str(weak), str(strong), "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    assert "DeLong" in r.output
    assert (tmp_path / "compare_test" / "compare.md").is_file()
    r = CliRunner().invoke(app, ["compare", str(weak)])
    assert r.exit_code == 2
