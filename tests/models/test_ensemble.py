"""Ensemble runs (``bonefrac ensemble``): the mean of the members' logits and maps, fitted on
their own val predictions, and a member whose weights hash does not match is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.ensembling import build_ensemble
from bonefrac.errors import RunDirError
from bonefrac.fileio import file_sha256
from bonefrac.inference.loop import FileInputs, collect
from bonefrac.inference.predictor import Predictor
from bonefrac.rundir import RunDir, missing_safeguards
from bonefrac.rundir.predictions import LOGIT, PATH


def other_member(loc_run: Path, dest: Path, seed: int) -> Path:
    """A copy of ``loc_run`` with its weights moved (another 'seed' of the same recipe, on
    the same split), its hash recorded as training records it."""
    shutil.copytree(loc_run, dest)
    run = RunDir(dest)
    gen = torch.Generator().manual_seed(seed)
    state = load_file(str(run.weights_path))
    moved = {  # learned weights moved; BatchNorm's running statistics kept
        k: v * (1 + 0.1 * torch.randn(v.shape, generator=gen))
        if v.is_floating_point() and "running" not in k
        else v
        for k, v in state.items()
    }
    save_file(moved, str(run.weights_path))
    run.update_meta(weights_sha256=file_sha256(run.weights_path), ood=None)
    run.ood_stats_path.unlink(missing_ok=True)
    return dest


@pytest.fixture(scope="module")
def ensemble_run(loc_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("ensemble")
    members = [loc_run, other_member(loc_run, root / "seed2", 2)]
    built = build_ensemble(members, root / "ens", progress=False)
    return built.path, members


def _outputs(run: Path, paths: list[str]):
    predictor = Predictor.from_run(run)
    return collect(predictor, FileInputs(paths, predictor.image_size, predictor.clahe),
                   progress=False)  # fmt: skip


def test_ensemble_predicts_the_mean_of_its_members_logits_and_maps(ensemble_run):
    ens, members = ensemble_run
    paths = RunDir(ens).predictions("test")[PATH].astype(str).tolist()[:12]
    got = _outputs(ens, paths)
    each = [_outputs(m, paths) for m in members]
    assert not np.allclose(each[0].logits, each[1].logits)  # two different members
    np.testing.assert_allclose(got.logits, np.mean([o.logits for o in each], axis=0), atol=1e-5)
    np.testing.assert_allclose(got.head, np.mean([o.head for o in each], axis=0), atol=1e-5)


def test_ensemble_is_fitted_on_its_own_val_predictions(ensemble_run):
    ens, members = ensemble_run
    run = RunDir(ens)
    meta = run.meta()
    assert meta.ensemble is not None and len(meta.ensemble.members) == 2
    assert meta.two_cuts and meta.rule_out <= meta.threshold
    assert set(meta.get("deploy")["fitted"]) >= {"calibrate", "threshold", "refer", "ood"}
    assert missing_safeguards(meta) == []
    assert meta.threshold != RunDir(members[0]).meta().threshold  # not borrowed from a member
    val = run.predictions("val")
    assert len(val) == len(RunDir(members[0]).predictions("val"))
    assert not (run.path / "model.safetensors").exists()
    assert [m.from_run for m in meta.ensemble.members] == ["loc", "seed2"]
    (answer,) = Predictor.from_run(ens).predict(val[PATH].iloc[0])
    assert answer.logit == pytest.approx(float(val[LOGIT].iloc[0]), abs=1e-4)  # the stored rows


def test_a_member_whose_hash_does_not_match_is_refused(ensemble_run, tmp_path):
    ens, _ = ensemble_run
    copy = tmp_path / "ens"
    shutil.copytree(ens, copy)
    member = copy / "members" / "m1.safetensors"
    state = load_file(str(member))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1.0
    save_file(state, str(member))
    with pytest.raises(RunDirError, match=r"m1\.safetensors.*ensemble member 1 \(seed2\)"):
        Predictor.from_run(copy)
    member.unlink()
    with pytest.raises(RunDirError, match="m1.safetensors: not found"):
        Predictor.from_run(copy)


def test_members_of_other_recipes_or_splits_are_refused(loc_run, tiny_run, tmp_path):
    with pytest.raises(RunDirError, match="localize"):
        build_ensemble([loc_run, tiny_run], tmp_path / "a")
    with pytest.raises(RunDirError, match="not a localising run"):
        build_ensemble([tiny_run, tiny_run], tmp_path / "b")
    with pytest.raises(RunDirError, match="at least 2"):
        build_ensemble([loc_run], tmp_path / "c")
    other = other_member(loc_run, tmp_path / "short", 3)
    preds = RunDir(other).read_predictions_raw("val")
    RunDir(other).write_predictions("val", preds.iloc[:-1])
    with pytest.raises(RunDirError, match="val images differ"):
        build_ensemble([loc_run, other], tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_cli_builds_an_ensemble_that_predict_takes(loc_run, tmp_path):
    from bonefrac.evaluation.ood import refit_appearance

    shutil.copytree(loc_run, tmp_path / "loc")
    loc_run = tmp_path / "loc"
    refit_appearance(loc_run)  # the members' appearance rule, fitted as training fits it
    member = other_member(loc_run, tmp_path / "seed4", 4)
    runner = CliRunner()
    image = RunDir(loc_run).predictions("test")[PATH].iloc[0]
    args = ["ensemble", str(loc_run), str(member), "--out", str(tmp_path / "ens"), "--no-progress"]
    bad = runner.invoke(app, [*args, "--ood", "nearest"])
    assert bad.exit_code == 2 and "--ood: deploy.ood" in bad.output
    assert not (tmp_path / "ens").exists()
    made = runner.invoke(app, [*args, "--ood", "none"])
    assert made.exit_code == 0, made.output
    assert "ensemble of 2: loc, seed4" in made.output and "miss_rate=" in made.output
    ens = RunDir(tmp_path / "ens")
    assert ens.meta().ood is None and ens.config().deploy.ood == "none"
    assert ens.meta().appearance is not None  # the members' rule is the ensemble's detector
    from bonefrac.packaging import package_run

    shipped = package_run(ens.path, "ens", root=tmp_path / "shipped", default=False).path
    assert (shipped / "appearance.safetensors").is_file()  # no refit without a feature detector
    assert Predictor.from_run(shipped).predict(image)[0].ood_reason in (None, "appearance")
    out = tmp_path / "p.csv"
    got = runner.invoke(app, ["predict", str(tmp_path / "ens"), str(image), "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert "decision" in out.read_text().splitlines()[0]


def test_onnx_export_and_fp16_packaging_take_an_ensemble(ensemble_run, tmp_path):
    from bonefrac.inference.onnx import export_onnx
    from bonefrac.packaging import package_run

    ens, _ = ensemble_run
    copy = tmp_path / "ens"
    shutil.copytree(ens, copy)
    export_onnx(copy)
    paths = RunDir(copy).predictions("test")[PATH].astype(str).tolist()[:6]
    onnx = Predictor.from_run(copy, "onnx")
    torch_logits = _outputs(copy, paths).logits
    onnx_logits = collect(onnx, FileInputs(paths, onnx.image_size, onnx.clahe), progress=False)
    np.testing.assert_allclose(onnx_logits.logits, torch_logits, atol=1e-3)

    report = package_run(copy, "ens-fp16", root=tmp_path / "shipped", default=False)
    shipped = RunDir(report.path)
    meta = shipped.meta()
    assert meta.get("weights_dtype") == report.weights_dtype == "float16"
    for member in meta.ensemble.members:  # each member stored, its own hash recorded
        assert file_sha256(shipped.path / member.file) == member.weights_sha256
    assert meta.weights_sha256 == meta.ensemble.digest() and missing_safeguards(meta) == []
    assert Predictor.from_run(shipped).predict(paths[0])[0].decision
