"""The model that ships inside the package (src/bonefrac/shipped): it loads by name, verifies
its hashes, predicts offline, carries every safeguard and a complete card, fits the size cap,
and `bonefrac predict default IMG` prints an answer without --out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import bonefrac
from bonefrac.cli import app
from bonefrac.fileio import folder_bytes
from bonefrac.packaging import MAX_BYTES
from bonefrac.rundir import DEFAULT_NAME, RunDir, shipped
from tests.conftest import shared_data_dir
from tests.synthetic import make_image

#: A FracAtlas radiograph with a fracture (the issue's time-to-first-answer image).
IMG0000019 = Path("fracatlas/images/Fractured/IMG0000019.jpg")


@pytest.fixture(scope="module")
def default_run() -> RunDir:
    if not shipped.shipped_models():
        pytest.fail("no shipped model in the package: src/bonefrac/shipped is incomplete")
    return RunDir.open(DEFAULT_NAME)


def test_the_default_is_a_versioned_shipped_model_under_the_size_cap(default_run: RunDir) -> None:
    name = default_run.shipped
    assert name is not None and name.startswith("lite0-loc-")
    assert shipped.aliases() == {DEFAULT_NAME: name}
    assert folder_bytes(default_run.path) <= MAX_BYTES
    assert not list(default_run.path.rglob("*.ckpt"))


def test_the_default_carries_every_safeguard_fitted_on_fp16(default_run: RunDir) -> None:
    meta = json.loads(default_run.meta_path.read_text())
    assert meta["weights_dtype"] == "float16"
    assert meta["threshold_criterion"] and 0.0 < meta["threshold"] < 1.0
    assert meta["temperature"] > 0.0 and meta["appearance"]["cutoff"] > 0
    # the two cuts: rule-in at val specificity 0.95, rule-out at val sensitivity 0.95
    assert meta["threshold_criterion"] == "specificity:0.95" and "refer" not in meta
    assert 0.0 < meta["rule_out"] < meta["threshold"]
    assert meta["rule_out_fit"]["val_sensitivity"]["value"] >= 0.95
    # the appearance rule is its out-of-scope detector: the feature detector does not ship,
    # which keeps the folder under the size cap (both: 13.2 MB)
    assert "ood" not in meta and not (default_run.path / "ood.safetensors").exists()
    parity = meta["shipped"]["parity"]
    assert parity["passed"] and parity["n_images"] > 1000


def test_the_card_has_what_a_reader_needs(default_run: RunDir) -> None:
    card = default_run.model_card()
    assert card is not None
    for needed in (
        "## Intended use",
        "never a diagnosis",
        "## Training data",
        "Manifest SHA-1",
        "## Recipe",
        "## Misses first",
        "miss rate",
        "normals cleared",
        "## Ranking and boxes",
        "| FracAtlas |",
        "| Roboflow bone-fracture (YOLO) |",
        "ap50_boxed",
        "## Known limits",
        "Paediatric",
        "## Licences",
        "CC BY 4.0",
    ):
        assert needed in card, needed
    # the card leads with the misses: its first table is the miss rate's
    assert card.index("## Misses first") < card.index("## Intended use")
    assert "/work/" not in card  # no path of the machine that built it
    for name in ("model.json", "config.yaml"):
        assert "/work/" not in (default_run.path / name).read_text()
    for split in ("val", "test"):
        paths = default_run.predictions(split)["path"].astype(str)
        assert not paths.str.startswith("/").any()


def test_the_default_loads_by_name_and_predicts_a_synthetic_image_offline(tmp_path: Path) -> None:
    arr, _ = make_image(np.random.default_rng(5), 256, fractured=True)
    img = tmp_path / "x.png"
    Image.fromarray(arr).save(img)
    pred = bonefrac.load(DEFAULT_NAME).predict(img)
    assert 0.0 <= pred.probability <= 1.0
    assert pred.decision in ("fracture", "no_fracture", "refer", "out_of_scope")


def test_predict_default_on_a_real_fracture_prints_the_answer() -> None:
    data = shared_data_dir()
    if data is None or not (data / IMG0000019).is_file():
        pytest.skip("FracAtlas is not in ../shared/data (or $BONEFRAC_DATA)")
    res = CliRunner().invoke(
        app,
        ["predict", DEFAULT_NAME, str(data / IMG0000019), "--workers", "0", "--no-progress"],
        env={"COLUMNS": "250"},
    )
    assert res.exit_code == 0, res.output
    line = next(s for s in res.output.splitlines() if s.startswith(str(data / IMG0000019)))
    assert ": fracture  probability " in line and "box" in line
    assert "1 inputs: 1 predicted (1 fracture" in res.output


def test_serve_without_run_answers_v1_model_with_the_default_card(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bonefrac serve` with no RUN: the app it would serve names the shipped model and carries
    its card on /v1/model (uvicorn itself is replaced by a test client)."""
    from fastapi.testclient import TestClient

    import bonefrac.serving.app
    from bonefrac.serving.app import create_app

    answers: list[dict] = []

    def serve_once(run: Path, config: object) -> None:
        with TestClient(create_app(run, warmup=False)) as client:
            answers.append(client.get("/v1/model").json())

    monkeypatch.setattr(bonefrac.serving.app, "serve", serve_once)
    res = CliRunner().invoke(app, ["serve", "--port", "8124"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    (info,) = answers
    name = RunDir.open(DEFAULT_NAME).shipped
    assert info["shipped"] == name and info["card"].startswith(f"# Model card: {name}")
    assert not info["missing_safeguards"]
