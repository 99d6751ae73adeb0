"""Resumable Optuna studies over the experiment config (``bonefrac tune``).

Each trial is a normal run directory ``<out>/trial-<k>/`` written by
:func:`bonefrac.training.fit.train`; the study itself lives in an Optuna storage (SQLite
``runs/tune.db`` by default; any SQLAlchemy URL such as PostgreSQL lets many workers share one
study). Re-running the same command loads the study and adds ``trials`` more trials.

What goes into the storage per trial: the sampled parameters (named by config path), the
objective value, and user attributes ``run_dir``, ``config`` (the resolved config) and the
validation metrics at threshold 0.5 (``roc_auc``, ``pr_auc``, ``f1``, ``sensitivity``,
``specificity``) from the run's ``metrics.json``.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from bonefrac.config import ExperimentConfig, load_config
from bonefrac.errors import ConfigError, RunDirError
from bonefrac.rundir import RunDir
from bonefrac.rundir.predictions import LABEL, PROB
from bonefrac.tuning.space import SearchSpace, load_space

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///runs/tune.db"
#: Validation metrics (threshold 0.5) copied from metrics.json into each trial's user attrs.
TRIAL_METRICS = ("roc_auc", "pr_auc", "f1", "sensitivity", "specificity")
#: Tries to open a storage whose tables another worker may be creating at the same moment.
_SCHEMA_ATTEMPTS = 5
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Objective:
    """A validation metric to maximise: ``val_roc_auc`` | ``val_f1`` | ``val_pr_auc`` |
    ``sens_at_spec:X``."""

    name: str
    target: float | None = None

    @classmethod
    def parse(cls, text: str) -> Objective:
        text = text.strip().lower()
        if text.startswith("sens_at_spec:"):
            try:
                target = float(text.split(":", 1)[1])
            except ValueError:
                target = -1.0
            if not 0 < target < 1:
                raise ConfigError(
                    f"objective {text!r}: expected sens_at_spec:X with 0 < X < 1, "
                    "e.g. sens_at_spec:0.9"
                )
            return cls("sens_at_spec", target)
        if text in ("val_roc_auc", "val_f1", "val_pr_auc"):
            return cls(text)
        raise ConfigError(
            f"unknown objective {text!r}; choose val_roc_auc, val_f1, val_pr_auc or sens_at_spec:X"
        )

    @property
    def label(self) -> str:
        return f"sens_at_spec:{self.target:g}" if self.target is not None else self.name

    @property
    def monitor(self) -> str:
        """The per-epoch logged metric the pruner watches (ROC-AUC stands in for sens@spec)."""
        return "val_roc_auc" if self.name == "sens_at_spec" else self.name

    def value(self, run_dir: Path) -> float:
        """The objective for a finished run directory (its saved model, val predictions)."""
        if self.name == "sens_at_spec":
            preds = RunDir(run_dir).predictions("val")
            return sensitivity_at_specificity(preds[LABEL], preds[PROB], self.target or 0.0)
        metrics = RunDir(run_dir).metrics()["val"]
        value = metrics[self.name.removeprefix("val_")]["value"]
        return float("nan") if value is None else float(value)


def sensitivity_at_specificity(y_true: Any, score: Any, specificity: float) -> float:
    """The highest sensitivity over thresholds whose specificity is >= ``specificity``."""
    import numpy as np
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true).astype(int)
    if y.min(initial=1) == y.max(initial=0):
        return float("nan")  # needs both classes
    fpr, tpr, _ = roc_curve(y, np.asarray(score, dtype=float), drop_intermediate=False)
    ok = (1.0 - fpr) >= specificity - 1e-12
    return float(tpr[ok].max())  # the (0, 0) point always qualifies


def default_study_name(cfg: ExperimentConfig) -> str:
    """``<config name>-tune`` (so trials never land inside a plain run called ``<name>``)."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name).strip("-.") or "experiment"
    return f"{base}-tune"


def open_storage(
    url: str | None = None, heartbeat_seconds: int = 60, grace_seconds: int = 180
) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for ``url`` (default ``sqlite:///runs/tune.db``, folder created).

    Heartbeats (every ``heartbeat_seconds``) mark trials of a killed worker as failed once they
    have been silent for ``grace_seconds``, and retry them once, the next time any worker
    starts a trial, so a crash loses no trial.
    """
    url = url or DEFAULT_STORAGE
    if "://" not in url:
        raise ConfigError(
            f"storage {url!r}: expected an SQLAlchemy URL, e.g. sqlite:///runs/tune.db or "
            "postgresql://user:password@host/dbname"
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        db = url[len("sqlite:///") :]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    import sqlalchemy.exc

    def connect() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_seconds,
                grace_period=grace_seconds,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1
                ),
            )

    try:
        for attempt in range(1, _SCHEMA_ATTEMPTS):
            try:
                return connect()
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers starting together on an empty database all create Optuna's tables;
                # PostgreSQL lets one win and the others fail on a duplicate. Once the winner
                # is done the tables exist and connecting again succeeds.
                time.sleep(0.5 * attempt)
        return connect()
    except ImportError as exc:
        raise ConfigError(
            f"storage {_redact(url)}: database driver missing ({exc}); for PostgreSQL "
            "install the driver extra: pip install 'bonefrac[postgres]'"
        ) from exc
    except Exception as exc:  # sqlalchemy errors: bad URL, unreachable server, auth
        raise ConfigError(f"storage {_redact(url)}: cannot open ({exc})") from exc


def load_study(study_name: str, storage: str | None = None) -> optuna.Study:
    """An existing study; an unknown name is a ConfigError listing the stored ones."""
    rdb = open_storage(storage)
    names = optuna.get_all_study_names(storage=rdb)
    if study_name not in names:
        listed = ", ".join(sorted(names)) or "none"
        raise ConfigError(
            f"no study {study_name!r} in {_redact(storage or DEFAULT_STORAGE)} "
            f"(studies there: {listed})"
        )
    return optuna.load_study(study_name=study_name, storage=rdb)


def run_study(
    config_path: str | Path | None,
    manifest: str | Path | None,
    space_path: str | Path,
    trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    objective: str | None = None,
    progress: bool | None = None,
) -> optuna.Study:
    """Run ``trials`` more trials of a study (created on first use) and return it.

    Everything is checked before the first trial: config + overrides, the space against the
    config (fields, bounds, choices, reachable models), the manifest, the storage, and that the
    existing study used the same objective and parameter ranges. Those problems raise; a trial
    that raises later is recorded as FAIL and the study goes on.
    """
    from bonefrac.data.schema import read_manifest

    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    overrides = list(overrides or [])
    if objective:
        overrides.append(f"tune.objective={objective}")
    base = load_config(config_path, overrides)
    space = load_space(space_path)
    space.validate_against(base, [o for o in overrides if not o.startswith("tune.")])
    if manifest is None and base.data.manifest is None:
        raise ConfigError("tune needs --manifest MANIFEST.csv (or data.manifest in the config)")
    manifest = Path(manifest if manifest is not None else base.data.manifest).resolve()
    read_manifest(manifest, require_split=True)
    base = base.model_copy(deep=True)
    base.data.manifest = str(manifest)
    obj = Objective.parse(base.tune.objective)

    name = study_name or default_study_name(base)
    if not _STUDY_NAME.match(name):
        raise ConfigError(f"study name {name!r}: use letters, digits, '-', '_' and '.' only")
    out_dir = Path(out) if out is not None else Path("runs") / name
    out_dir = out_dir.resolve()

    rdb = open_storage(storage, base.tune.heartbeat_seconds, base.tune.grace_seconds)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=base.tune.prune_startup_trials,
            n_warmup_steps=base.tune.prune_warmup_epochs,
        )
        if base.tune.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=rdb, study_name=name, direction="maximize", pruner=pruner, load_if_exists=True
    )
    _check_study(study, obj, space, out_dir)
    study.set_user_attr("objective", obj.label)
    if "out_dir" not in study.user_attrs:
        study.set_user_attr("out_dir", str(out_dir))

    if progress is None:
        progress = base.train.progress_bar

    def run_trial(trial: optuna.Trial) -> float:
        return _run_trial(trial, base, space, obj, manifest, out_dir, name, progress)

    n_before = len(study.trials)
    log.info(
        "study %r (%s, %d trials so far): running %d more; trials in %s",
        name, obj.label, n_before, trials, out_dir,
    )  # fmt: skip
    study.optimize(run_trial, n_trials=trials, catch=(Exception,), gc_after_trial=True)
    return study


def _run_trial(
    trial: optuna.Trial,
    base: ExperimentConfig,
    space: SearchSpace,
    obj: Objective,
    manifest: Path,
    out_dir: Path,
    study_name: str,
    progress: bool,
) -> float:
    from bonefrac.training.fit import train

    run_dir = out_dir / f"trial-{trial.number}"
    trial.set_user_attr("run_dir", str(run_dir))
    values = space.suggest(trial)
    cfg = space.apply(base, values, f"{space.source} (trial {trial.number})")
    cfg.name = f"{study_name}-trial-{trial.number}"
    trial.set_user_attr("config", cfg.model_dump(mode="json"))
    callbacks = []
    if cfg.tune.pruning:
        from optuna_integration import PyTorchLightningPruningCallback

        callbacks.append(PyTorchLightningPruningCallback(trial, monitor=obj.monitor))
    try:
        train(cfg, manifest, run_dir, progress=progress, callbacks=callbacks)
    except SystemExit as exc:  # Lightning turns Ctrl+C into SystemExit after cleaning up
        raise KeyboardInterrupt from exc
    run = RunDir(run_dir)
    if not run.metrics_path.is_file():
        raise RunDirError(f"{run_dir}: training stopped before writing {run.metrics_path.name}")
    val = run.metrics().get("val", {})
    for key in TRIAL_METRICS:
        value = (val.get(key) or {}).get("value")
        trial.set_user_attr(key, None if value is None else float(value))
    return obj.value(run_dir)


def _check_study(study: optuna.Study, obj: Objective, space: SearchSpace, out_dir: Path) -> None:
    """Refuse to mix objectives, parameter ranges or leftover run directories in one study."""
    from optuna.distributions import check_distribution_compatibility

    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {study.study_name!r} minimises; bonefrac studies maximise")
    previous = study.user_attrs.get("objective")
    if previous is not None and previous != obj.label:
        raise ConfigError(
            f"study {study.study_name!r} optimises {previous}, not {obj.label}; keep "
            f"--objective/tune.objective {previous} or start a new --study"
        )
    # dirs first, then trials: a trial another worker starts meanwhile is already counted
    existing = (
        {p.name for p in out_dir.iterdir() if p.name.startswith("trial-")}
        if out_dir.is_dir()
        else set()
    )
    trials = study.get_trials(deepcopy=False)
    wanted = _space_distributions(space)
    for t in trials:
        for pname, dist in t.distributions.items():
            if pname in wanted:
                try:
                    check_distribution_compatibility(dist, wanted[pname])
                except ValueError as exc:
                    raise ConfigError(
                        f"{space.source}: {pname} differs from the range study "
                        f"{study.study_name!r} used ({exc}); use a new --study for a new space"
                    ) from None
    numbers = {f"trial-{t.number}" for t in trials}
    stray = sorted(existing - numbers)
    if stray:
        raise RunDirError(
            f"{out_dir}: holds {', '.join(stray[:3])} that study {study.study_name!r} does not "
            "know (another study's trials?); choose another --out or --study"
        )


def _space_distributions(space: SearchSpace) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    from bonefrac.tuning.space import choice_labels

    out: dict[str, Any] = {}
    for path, spec in space.params.items():
        if spec.type == "float":
            out[path] = FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
        elif spec.type == "int":
            out[path] = IntDistribution(
                int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1)
            )
        else:
            out[path] = CategoricalDistribution(choice_labels(spec))
    return out


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


__all__ = [
    "DEFAULT_STORAGE",
    "Objective",
    "default_study_name",
    "load_study",
    "open_storage",
    "run_study",
    "sensitivity_at_specificity",
]
