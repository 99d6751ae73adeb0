"""``explain_run`` and ``bonefrac explain`` on the session's tiny trained run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.data.schema import parse_boxes, read_manifest
from bonefrac.errors import DataError, RunDirError
from bonefrac.explain.run import Item, explain_run, select_for_overlay
from bonefrac.rundir import overlay_stem


def _n_boxed_test(run) -> int:
    meta = json.loads((run / "model.json").read_text())
    df = read_manifest(meta["manifest"])
    return sum(1 for b in df.loc[df["split"] == "test", "boxes"] if parse_boxes(b))


def test_cli_score_writes_localization(run_copy):
    result = CliRunner().invoke(app, ["explain", str(run_copy), "--score", "--n", "5"])
    assert result.exit_code == 0, result.output
    assert "hit rate" in result.output
    edir = run_copy / "explain"
    loc = json.loads((edir / "localization.json").read_text())
    for key in ("n_scored", "hit_rate", "energy_in_box"):
        assert key in loc
    assert loc["n_scored"] == _n_boxed_test(run_copy) > 5  # all boxed images, not only --n
    assert 0.0 <= loc["hit_rate"] <= 1.0 and 0.0 <= loc["energy_in_box"] <= 1.0
    assert loc["method"] == "gradcam" and loc["layer"] == "backbone.stages.3"
    assert len(loc["per_image"]) == loc["n_scored"]
    assert (edir / "grid.png").is_file() and (edir / "gradcam" / "grid.png").is_file()
    overlays = [p for p in (edir / "gradcam").glob("*.png") if p.name != "grid.png"]
    assert len(overlays) == 5
    # what report.html looks for: top level holds only grid.png (+ localization.json)
    assert sorted(p.name for p in edir.glob("*.png")) == ["grid.png"]
    # every overlay is at the original size of its image
    preds = pd.read_csv(run_copy / "predictions" / "test.csv", dtype={"image_id": str})
    by_stem = {overlay_stem(i): p for i, p in zip(preds["image_id"], preds["path"], strict=True)}
    for ov in overlays:
        with Image.open(ov) as a, Image.open(by_stem[ov.stem]) as b:
            assert a.size == b.size


def test_cli_other_method_and_layer(run_copy, tmp_path):
    out = tmp_path / "ex"
    args = ["explain", str(run_copy), "--method", "gradcam++", "--layer", "backbone.stages.2"]
    result = CliRunner().invoke(app, args + ["--n", "3", "--score", "--out", str(out)])
    assert result.exit_code == 0, result.output
    loc = json.loads((out / "localization.json").read_text())
    assert loc["method"] == "gradcam++" and loc["layer"] == "backbone.stages.2"
    assert len(list((out / "gradcam++").glob("*.png"))) == 4  # 3 overlays + grid
    assert not (run_copy / "explain").exists()


def test_images_mode_non_square_original_size(run_copy, tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(30, 90, (50, 80)).astype(np.uint8)
    arr[20:22, 50:62] = 250
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(arr).save(src / "wide.png")
    Image.fromarray(arr.T.copy()).save(src / "tall.png")
    res = explain_run(run_copy, images=[src], method="saliency", n=16, out_dir=tmp_path / "o")
    assert res["layer"] is None and res["localization"] is None
    sizes = {}
    for p in res["overlays"]:
        with Image.open(p) as im:
            sizes[p.stem] = im.size
    assert sizes == {"wide": (80, 50), "tall": (50, 80)}
    assert res["grid"].is_file()


def test_images_mode_finds_manifest_boxes(run_copy, tmp_path):
    """Files that are in the run's manifest get their label and boxes (and can be scored)."""
    preds = pd.read_csv(run_copy / "predictions" / "test.csv", dtype={"image_id": str})
    paths = preds.loc[preds["label"] == 1, "path"].head(2).tolist()
    extra = preds.loc[preds["label"] == 0, "path"].head(1).tolist()
    args = ["explain", str(run_copy), "--images", *paths, *extra, "--method", "eigencam"]
    result = CliRunner().invoke(app, args + ["--score", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    loc = json.loads((tmp_path / "o" / "localization.json").read_text())
    assert loc["n_scored"] == 2 and loc["method"] == "eigencam"


def test_selection_mixes_positives_and_negatives():
    items = [
        Item(f"p{i}", "", 1, float(i), [[0.5, 0.5, 0.1, 0.1]] if i % 2 else []) for i in range(8)
    ]
    items += [Item(f"n{i}", "", 0, float(i - 5)) for i in range(8)]
    chosen = select_for_overlay(items, 8)
    ids = [it.image_id for it in chosen]
    assert ids == ["p7", "p5", "p3", "p1", "p6", "p4", "n7", "n6"]  # boxed first, then by logit
    only_neg = select_for_overlay([it for it in items if it.label == 0], 4)
    assert len(only_neg) == 4
    assert select_for_overlay(items, 0) == []
    assert len(select_for_overlay(items, 100)) == 16


def test_errors(run_copy, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["explain", str(run_copy), "--method", "lime"])
    assert bad.exit_code == 2 and "unknown explain method" in bad.output
    missing = runner.invoke(app, ["explain", str(run_copy), "--images", str(tmp_path / "no.png")])
    assert missing.exit_code == 2 and "no such image" in missing.output
    stray = runner.invoke(app, ["explain", str(run_copy), str(tmp_path)])
    assert stray.exit_code == 2 and "--images" in stray.output
    layer = runner.invoke(app, ["explain", str(run_copy), "--layer", "backbone.nope", "--n", "1"])
    assert layer.exit_code == 2 and "no such module" in layer.output
    with pytest.raises(RunDirError, match="predictions"):
        explain_run(run_copy, split="nosuch")
    meta = json.loads((run_copy / "model.json").read_text())
    meta["manifest"] = str(tmp_path / "gone.csv")
    (run_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="--score needs"):
        explain_run(run_copy, score=True)
    res = explain_run(run_copy, n=2, out_dir=tmp_path / "o")  # no manifest: overlays, no boxes
    assert len(res["overlays"]) == 2


def test_overlay_stem():
    assert overlay_stem("IMG0001.jpg") == "IMG0001"
    assert overlay_stem("a/b c.png") == "a_b_c"
    assert overlay_stem("...") == "image"
