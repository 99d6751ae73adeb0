"""A study shared by several ``bonefrac tune`` workers on a real PostgreSQL server.

Needs ``BONEFRAC_TEST_POSTGRES_URL`` (``.ci/postgres.sh`` starts a throwaway cluster and sets
it); skipped without it, except under ``BONEFRAC_REQUIRE_POSTGRES=1`` (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest

from bonefrac.tuning.study import load_study, open_storage
from tests.cli_subprocess import bonefrac_command, cli_env, set_args
from tests.tuning.conftest import TUNE_OVERRIDES, write_space

#: One epoch on 16 32-px images per split, no pruning: every finished trial is COMPLETE.
PG_OVERRIDES = [
    *TUNE_OVERRIDES,
    "train.epochs=1",
    "data.image_size=32",
    "data.limit_per_split=16",
    "tune.pruning=false",
]
#: Heartbeat every second; a trial silent for 3 s belongs to a dead worker.
FAST_HEARTBEAT = ["tune.heartbeat_seconds=1", "tune.grace_seconds=3"]


@pytest.fixture(scope="module")
def pg_url() -> str:
    url = os.environ.get("BONEFRAC_TEST_POSTGRES_URL")
    if url:
        return url
    reason = (
        "no PostgreSQL server: set BONEFRAC_TEST_POSTGRES_URL, e.g. "
        "postgresql://postgres@/db?host=/tmp/sock (.ci/postgres.sh starts one)"
    )
    if os.environ.get("BONEFRAC_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"BONEFRAC_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def study_name(pg_url: str) -> Iterator[str]:
    """A fresh study name, deleted from the server afterwards."""
    name = f"pg-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(KeyError):  # the test failed before creating it
        optuna.delete_study(study_name=name, storage=open_storage(pg_url))


def _tune(
    manifest: Path, space: Path, out: Path, url: str, study: str, trials: int, extra: list[str]
) -> subprocess.Popen:
    args = ["tune", "--manifest", str(manifest), "--space", str(space), "--trials", str(trials),
            "--storage", url, "--study", study, "--out", str(out), *set_args(extra)]  # fmt: skip
    return subprocess.Popen(
        [*bonefrac_command(), *args], env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"tune worker did not finish in {timeout} s:\n{output}")
    assert proc.returncode == 0, output
    return output


def test_two_workers_share_one_study(
    tmp_path: Path, synthetic_manifest: Path, pg_url: str, study_name: str
) -> None:
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "trials"
    workers = [
        _tune(synthetic_manifest, space, out, pg_url, study_name, 2, PG_OVERRIDES) for _ in range(2)
    ]
    for proc in workers:
        _finish(proc)

    trials = load_study(study_name, pg_url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # no number used twice
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert run_dirs == {str(out / f"trial-{k}") for k in range(4)}
    for run in run_dirs:
        assert (Path(run) / "metrics.json").is_file()

    report = subprocess.run(
        [*bonefrac_command(), "tune", "report", "--study", study_name, "--storage", pg_url],
        env=cli_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr
    assert "ranked by sensitivity" in report.stdout
    ranked = pd.read_csv(out / "trials.csv")
    assert sorted(ranked["trial"]) == [0, 1, 2, 3]
    assert (out / "best.yaml").is_file()


def test_a_killed_workers_trial_is_retried(
    tmp_path: Path, synthetic_manifest: Path, pg_url: str, study_name: str
) -> None:
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "trials"
    # a worker whose trial would run long: killed (no clean-up at all) while it trains
    doomed = _tune(
        synthetic_manifest, space, out, pg_url, study_name, 1,
        [*PG_OVERRIDES, *FAST_HEARTBEAT, "train.epochs=500"],
    )  # fmt: skip
    deadline = time.monotonic() + 120
    running: list[optuna.trial.FrozenTrial] = []
    while not running:
        assert doomed.poll() is None, doomed.communicate()[0]
        assert time.monotonic() < deadline, "the first worker never started its trial"
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name=study_name, storage=pg_url)
        except KeyError:  # not created yet
            continue
        running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        running = [t for t in running if t.params]  # parameters sampled: it is training
    doomed.kill()
    doomed.communicate()
    time.sleep(4)  # past the 3 s grace period: its heartbeat is stale now

    # the next worker fails the stale trial and runs it again with the same parameters
    _finish(_tune(synthetic_manifest, space, out, pg_url, study_name, 1,
                  [*PG_OVERRIDES, *FAST_HEARTBEAT]))  # fmt: skip
    trials = load_study(study_name, pg_url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    retry = trials[1]
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert callback.retried_trial_number(retry) == trials[0].number
    assert retry.params == trials[0].params
    assert (out / f"trial-{retry.number}" / "metrics.json").is_file()
