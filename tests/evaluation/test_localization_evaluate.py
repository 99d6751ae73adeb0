"""``bonefrac evaluate`` / report / compare on a localising run's predictions (fake runs)."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.evaluation.evaluate import evaluate_run
from bonefrac.evaluation.localization_metrics import LOC_METRIC_NAMES
from bonefrac.evaluation.report_localization import pick_gallery
from bonefrac.fileio import read_json
from bonefrac.rundir import RunDir
from tests.evaluation.conftest import make_run
from tests.evaluation.locfake import add_localization


def localising_run(root: Path, name: str = "loc", images: bool = True, **kw) -> Path:
    """A fake run whose val/test predictions carry the localisation columns."""
    run = make_run(root, name, **kw)
    layout = RunDir.open(run)
    for split in ("val", "test"):
        df = layout.read_predictions_raw(split)
        df = add_localization(
            df,
            seed=len(split),
            n_false=1,
            images_dir=root / f"{name}_images" / split if images else None,
        )
        layout.write_predictions(split, df)
    return run


def test_evaluate_merges_localisation_metrics(tmp_path):
    run = localising_run(tmp_path, images=False)
    res = evaluate_run(run, split="test", n_boot=100, report=False)
    data = read_json(run / "metrics.json")["test"]
    for name in LOC_METRIC_NAMES:
        entry = data[name]
        assert set(entry) == {"value", "ci_low", "ci_high"}, name
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    assert data["hit_rate"]["value"] == 1.0
    assert data["ap50"]["value"] == res.metrics["ap50"]["value"]
    assert 0.9 < data["ap50"]["value"] <= 1.0  # true boxes exact, one low-scored false box each
    loc = data["localization"]
    assert loc["support"]["n_images"] == 400 and loc["support"]["n_with_boxes"] > 50
    assert loc["settings"]["n_boot"] == 100
    assert data["roc_auc"]["value"] is not None  # classification metrics untouched


def test_classification_only_run_gets_no_localisation(fake_run):
    evaluate_run(fake_run, split="test", n_boot=0, report=False)
    data = read_json(fake_run / "metrics.json")["test"]
    assert not set(LOC_METRIC_NAMES) & set(data) and "localization" not in data


def test_cli_evaluate_prints_localisation(tmp_path):
    run = localising_run(tmp_path, images=False)
    res = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    for word in ("hit_rate", "ap50", "froc_0.5", "centre_hit_rate", "chance_hit_rate", "FROC"):
        assert word in res.output, word
    bare = CliRunner().invoke(app, ["evaluate", str(make_run(tmp_path, "cls")), "--n-boot", "0"])
    assert bare.exit_code == 0 and "hit_rate" not in bare.output


def test_report_localisation_section_and_gallery(tmp_path):
    run = localising_run(tmp_path)
    gone = RunDir.open(run).read_predictions_raw("test")
    evaluate_run(run, split="val", n_boot=20, report=False)
    # one gallery image moved away: left out with a count, not an error
    first_boxed = gone[gone["boxes"] != "[]"]["path"].iloc[0]
    Path(first_boxed).unlink()
    evaluate_run(run, split="test", n_boot=20)
    text = (run / "report.html").read_text()
    assert 'id="localization"' in text
    section = text.split('id="localization"')[1].split("<h2")[0]
    for word in ("hit_rate", "ap50", "froc_2", "always the image centre", "random point"):
        assert word in section, word
    # without explain overlays, the box gallery is the first section's gallery (not repeated)
    assert "Gallery (test)" not in section
    section = text.split('id="summary"')[1].split("<h2")[0].split("Gallery (test)")[1]
    assert "1 image(s) left out" in section
    tiles = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', section)
    assert len(tiles) == 11
    img = Image.open(io.BytesIO(base64.b64decode(tiles[0])))
    assert img.size == (48, 32)  # a small source keeps its size
    assert "predicted box" in section


def test_report_without_localisation_has_no_section(fake_run):
    evaluate_run(fake_run, split="test", n_boot=0)
    assert 'id="localization"' not in (fake_run / "report.html").read_text()


def test_gallery_pick_mixes_boxed_images_and_false_alarms(tmp_path):
    from bonefrac.evaluation.localization_metrics import LocInputs

    truth = [[[0.5, 0.5, 0.1, 0.1]] if i % 2 else [] for i in range(40)]
    preds = [[[0.3, 0.3, 0.1, 0.1, i / 40]] for i in range(40)]
    inp = LocInputs([str(i) for i in range(40)], truth, [None] * 40, preds)
    pick = pick_gallery(inp, 12)
    assert len(pick) == 12 and len(set(pick)) == 12
    boxed = [i for i in pick if truth[i]]
    alarms = [i for i in pick if not truth[i]]
    assert len(boxed) == 8 and alarms == [38, 36, 34, 32]


def test_gallery_pick_keeps_one_image_per_duplicate_group():
    from bonefrac.evaluation.localization_metrics import LocInputs

    truth = [[[0.5, 0.5, 0.1, 0.1]] if i % 2 else [] for i in range(40)]
    preds = [[[0.3, 0.3, 0.1, 0.1, i / 40]] for i in range(40)]
    inp = LocInputs([str(i) for i in range(40)], truth, [None] * 40, preds)
    groups = [f"g{i % 2}-{i // 4}" for i in range(40)]  # pairs of siblings (i, i + 2)
    pick = pick_gallery(inp, 12, groups=groups)
    assert len(pick) == 12 and len({groups[i] for i in pick}) == 12
    assert len([i for i in pick if truth[i]]) == 8 and len([i for i in pick if not truth[i]]) == 4


def test_compare_shows_localisation(tmp_path):
    a = localising_run(tmp_path, "a", images=False)
    b = make_run(tmp_path, "b", seed=0)
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(out), "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    assert "ap50" in res.output and "hit_rate" in res.output
    md = (out / "compare.md").read_text()
    assert "ap50" in md and "hit_rate" in md and "ap50_boxed" in md
    assert "<h2>Localisation</h2>" in (out / "compare.html").read_text()
    data = read_json(out / "compare.json")
    assert data["localization"]["a"]["ap50"]["value"] > 0.9
    assert (
        data["localization"]["a"]["ap50_boxed"]["value"]
        >= data["localization"]["a"]["ap50"]["value"]
    )
    assert data["localization"]["b"] is None
