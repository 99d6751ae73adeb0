"""Optuna studies on the tiny synthetic set: trials, resume, failures, report, CLI."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from typer.testing import CliRunner

from bonefrac.cli import app
from bonefrac.config import load_config
from bonefrac.errors import ConfigError, RunDirError
from bonefrac.tuning.report import ranked, trials_frame, tune_report
from bonefrac.tuning.study import load_study, run_study
from tests.tuning.conftest import TUNE_OVERRIDES, write_space

runner = CliRunner()


def _set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, synthetic_manifest: Path):
    root = tmp_path_factory.mktemp("tune")
    space = write_space(root / "space.yaml")
    storage = f"sqlite:///{root}/tune.db"
    study = run_study(
        None, synthetic_manifest, space, 3, storage=storage, study_name="tiny",
        out=root / "tiny", overrides=TUNE_OVERRIDES,
    )  # fmt: skip
    return SimpleNamespace(
        root=root, space=space, storage=storage, study=study, manifest=synthetic_manifest
    )


def test_three_trials_complete_and_are_ranked(tiny_study) -> None:
    trials = load_study("tiny", tiny_study.storage).trials[:3]
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert run == tiny_study.root / "tiny" / f"trial-{t.number}"
        for name in ("config.yaml", "model.json", "model.safetensors", "metrics.json"):
            assert (run / name).is_file()
        assert (run / "predictions" / "val.csv").is_file()
        assert set(t.params) == {"train.lr", "data.sampler"}
        assert {"roc_auc", "f1", "sensitivity", "specificity"} <= set(t.user_attrs)
        assert 0.0 <= t.value <= 1.0
        assert len(t.intermediate_values) == 2  # the pruning callback reported each epoch
        cfg = load_config(run / "config.yaml")
        assert cfg.train.lr == pytest.approx(t.params["train.lr"])
        assert cfg.data.sampler == t.params["data.sampler"]
        assert cfg.train.epochs == 2
    frame = trials_frame(load_study("tiny", tiny_study.storage))
    for by in ("sensitivity", "f1"):
        order = ranked(frame, by)
        assert len(order) == len(frame[frame["state"] == "COMPLETE"])
        assert list(order[by]) == sorted(order[by], reverse=True)


def test_second_invocation_adds_trials(tiny_study) -> None:
    before = len(load_study("tiny", tiny_study.storage).trials)
    args = ["tune", "--manifest", str(tiny_study.manifest), "--space", str(tiny_study.space),
            "--trials", "1", "--storage", tiny_study.storage, "--study", "tiny",
            "--out", str(tiny_study.root / "tiny"), *_set_args(TUNE_OVERRIDES)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "study tiny" in result.output
    study = load_study("tiny", tiny_study.storage)
    assert len(study.trials) == before + 1
    assert (tiny_study.root / "tiny" / f"trial-{before}" / "metrics.json").is_file()
    # another objective on the same study is refused before any trial starts
    result = runner.invoke(app, [*args, "--objective", "val_f1"])
    assert result.exit_code == 2
    assert "optimises val_roc_auc" in result.output
    assert len(load_study("tiny", tiny_study.storage).trials) == before + 1


def test_report_ranks_and_writes_best_yaml(tiny_study) -> None:
    result = runner.invoke(
        app, ["tune", "report", "--study", "tiny", "--storage", tiny_study.storage]
    )
    assert result.exit_code == 0, result.output
    assert "ranked by sensitivity" in result.output and "ranked by F1" in result.output
    out = tiny_study.root / "tiny"
    best = out / "best.yaml"
    cfg = load_config(best)
    study = load_study("tiny", tiny_study.storage)
    assert cfg.name == "tiny-best"
    assert cfg.train.lr == pytest.approx(study.best_trial.params["train.lr"])
    assert cfg.data.manifest == str(tiny_study.manifest.resolve())
    assert (out / "trials.csv").is_file()
    assert (out / "tune_history.png").stat().st_size > 1000


def test_failed_trial_is_recorded_and_study_goes_on(
    tmp_path: Path, synthetic_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bonefrac.training.fit as fit

    real_train = fit.train

    def flaky_train(cfg, manifest, out, **kwargs):
        if Path(out).name == "trial-0":
            raise RuntimeError("boom: simulated crash")
        return real_train(cfg, manifest, out, **kwargs)

    monkeypatch.setattr(fit, "train", flaky_train)
    # trial 2 is pruned after its first epoch (exercises the Lightning pruning callback)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 2)
    storage = f"sqlite:///{tmp_path}/tune.db"
    study = run_study(
        None, synthetic_manifest, write_space(tmp_path / "space.yaml"), 3, storage=storage,
        study_name="flaky", out=tmp_path / "flaky", overrides=TUNE_OVERRIDES,
    )  # fmt: skip
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "PRUNED"]
    assert study.trials[0].user_attrs["run_dir"].endswith("trial-0")
    assert len(study.trials[2].intermediate_values) == 1

    # one completed trial: report still works, importance is skipped with a note
    rep = tune_report("flaky", storage)
    assert rep.best_trial == 1 and rep.best_yaml is not None and rep.best_yaml.is_file()
    assert not rep.importances
    assert any("at least 2 completed" in n for n in rep.notes)


def test_report_without_completed_trials(
    tmp_path: Path, synthetic_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bonefrac.training.fit as fit

    def broken_train(*args, **kwargs):
        raise RuntimeError("always fails")

    monkeypatch.setattr(fit, "train", broken_train)
    storage = f"sqlite:///{tmp_path}/tune.db"
    run_study(
        None, synthetic_manifest, write_space(tmp_path / "space.yaml"), 2, storage=storage,
        study_name="broken", out=tmp_path / "broken", overrides=TUNE_OVERRIDES,
    )  # fmt: skip
    result = runner.invoke(app, ["tune", "report", "--study", "broken", "--storage", storage])
    assert result.exit_code == 0, result.output
    assert "no completed trial" in result.output
    assert not (tmp_path / "broken" / "best.yaml").exists()
    result = runner.invoke(app, ["tune", "report", "--study", "nope", "--storage", storage])
    assert result.exit_code == 2 and "studies there: broken" in result.output


@pytest.mark.parametrize(
    "space",
    [
        {"params": {"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}},
        {"params": {"train.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}},
        {"params": {"data.sampler": {"type": "categorical", "choices": ["none", "sometimes"]}}},
    ],
    ids=["typo", "bounds", "choice"],
)
def test_invalid_space_rejected_before_training(
    tmp_path: Path, synthetic_manifest: Path, space: dict
) -> None:
    space_file = write_space(tmp_path / "space.yaml", space)
    db = tmp_path / "db" / "tune.db"
    args = ["tune", "--manifest", str(synthetic_manifest), "--space", str(space_file),
            "--trials", "2", "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "out"),
            *_set_args(TUNE_OVERRIDES)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "error:" in result.output and "space.yaml" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not db.exists()


def test_stray_trial_dirs_are_refused(tmp_path: Path, synthetic_manifest: Path) -> None:
    (tmp_path / "out" / "trial-0").mkdir(parents=True)
    with pytest.raises(RunDirError, match="trial-0"):
        run_study(
            None, synthetic_manifest, write_space(tmp_path / "space.yaml"), 1,
            storage=f"sqlite:///{tmp_path}/tune.db", study_name="s", out=tmp_path / "out",
            overrides=TUNE_OVERRIDES,
        )  # fmt: skip


def test_cli_forms(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tune", "--help"])
    assert result.exit_code == 0
    for word in ("--config", "--manifest", "--space", "--trials", "--storage", "--study",
                 "--out", "--set", "--objective", "report"):  # fmt: skip
        assert word in result.output
    result = runner.invoke(app, ["tune", "report", "--help"])
    assert result.exit_code == 0 and "--study" in result.output and "--storage" in result.output
    result = runner.invoke(app, ["tune", "--manifest", "m.csv", "--trials", "1"])
    assert result.exit_code == 2 and "--space" in result.output
    space = write_space(tmp_path / "space.yaml")
    result = runner.invoke(app, ["tune", "--space", str(space), "--trials", "1"])
    assert result.exit_code == 2 and "--manifest" in result.output
    with pytest.raises(ConfigError, match="at least 1"):
        run_study(None, tmp_path / "m.csv", tmp_path / "s.yaml", 0)
