"""'make demo' without data: the shipped model on the bundled samples, into one results page."""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from bonefrac.batch_predict.stream import read_rows
from bonefrac.demo import CSV, PAGE, read_samples, run_demo
from bonefrac.errors import ConfigError
from bonefrac.rundir.predictions import DECISION, ERROR, PATH

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # a relative folder, as 'make demo' passes it
        mp.chdir(tmp_path_factory.mktemp("demo"))
        return run_demo(Path("demo") / "samples")


def test_the_demo_writes_the_page_naming_each_sample_and_its_decision(demo) -> None:
    page = demo.page.read_text(encoding="utf-8")
    names = [*read_samples()["file"], "IMG0002472.dcm"]
    assert [s.name for s in demo.samples] == names
    for sample in demo.samples:
        card = page.split(f"<h2>{html.escape(sample.name)}</h2>", 1)[1].split("</section>", 1)[0]
        assert f'<p class="decision">{sample.decision}</p>' in card
        assert sample.decision in {"fracture", "no_fracture", "refer"}
        assert f'src="{sample.overlay}"' in card and (demo.out / sample.overlay).is_file()


def test_the_demo_writes_the_predictions_csv_and_a_dicom_sc_and_sr(demo) -> None:
    rows = read_rows(demo.out / CSV)
    assert len(rows) == 6 and not any(r[ERROR] for r in rows)
    assert [r[DECISION] for r in rows] == [s.decision for s in demo.samples]
    assert Path(rows[-1][PATH]).suffix == ".dcm"
    files = [pydicom.dcmread(p) for p in demo.dicom_files]
    assert len(files) == 2
    (sc,) = [d for d in files if "Secondary Capture" in d.SOPClassUID.name]
    (sr,) = [d for d in files if d.Modality == "SR"]
    source = pydicom.dcmread(demo.out / "inputs" / "IMG0002472.dcm")
    assert source.Modality == "CR"
    assert sc.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID


def test_the_dicom_sample_agrees_with_its_jpeg(demo) -> None:
    by_name = {s.name: s for s in demo.samples}
    jpeg, dicom = by_name["IMG0002472.jpg"], by_name["IMG0002472.dcm"]
    assert dicom.decision == jpeg.decision
    assert dicom.probability == pytest.approx(jpeg.probability, abs=0.02)


def test_a_second_demo_into_the_same_folder_needs_force(demo) -> None:
    keep = demo.out / "mine.txt"
    keep.write_text("not the demo's")
    with pytest.raises(ConfigError, match="--force"):
        run_demo(demo.out)
    assert keep.read_text() == "not the demo's"


def _make_demo_dry_run(data: str) -> str:
    """What 'make demo BONEFRAC_DATA=<data>' would run (make -n; install counted as done)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = Path(sys.executable).parent.parent
    done = subprocess.run(
        ["make", "-n", "-o", f"{venv}/.installed", "demo", f"BONEFRAC_DATA={data}", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_demo_without_data_runs_the_demo_and_with_data_trains() -> None:
    without = _make_demo_dry_run("")
    assert "bonefrac demo --out demo/samples --force" in without
    assert "bonefrac train" not in without and "data build" not in without
    with_data = _make_demo_dry_run("/data")
    assert "bonefrac data build --fracatlas /data/fracatlas" in with_data
    assert "bonefrac train --config configs/lite0.yaml" in with_data
    assert "bonefrac demo" not in with_data
    assert PAGE == "index.html"
