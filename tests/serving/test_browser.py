"""The page in a real browser: Debian's chromium driven by Playwright (no CDN, offline).

Needs ``apt-get install chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python package;
no Playwright-downloaded browser is used.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (/usr/bin/chromium missing): "
        "apt-get install -y chromium",
    ),
]


@contextlib.contextmanager
def _page():
    """A page in Debian's headless chromium (no Playwright-downloaded browser)."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.fixture()
def server_url(tiny_run: Path):
    yield from _serve(tiny_run)


def _serve(run: Path):
    from bonefrac.serving.app import create_app
    from tests.serving.live import thread_server

    with thread_server(create_app(run)) as port:
        yield f"http://127.0.0.1:{port}"


def test_upload_shows_probability_and_heatmap(server_url, synthetic_manifest, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    image = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[0]
    with _page() as page:
        outside: list[str] = []
        page.on(
            "request",
            lambda r: (
                outside.append(r.url) if not r.url.startswith((server_url, "data:")) else None
            ),
        )
        page.goto(server_url + "/")
        sync_api.expect(page.locator("#caveat")).to_contain_text("not a diagnosis")
        sync_api.expect(page.locator("#model-info")).to_contain_text("threshold")
        # the tiny run has none of the four safeguards: the banner names them
        sync_api.expect(page.locator("#safeguards")).to_be_visible()
        sync_api.expect(page.locator("#safeguard-list li")).to_have_count(4)
        sync_api.expect(page.locator("#safeguards")).to_contain_text("bonefrac calibrate RUN")
        sync_api.expect(page.locator("#model-card")).to_be_hidden()  # the run has no card
        page.set_input_files("#file", str(image))
        sync_api.expect(page.locator("#probability")).to_have_text(
            re.compile(r"^[<>]?\d+(\.\d)?%$"), timeout=30_000
        )
        sync_api.expect(page.locator("#decision")).to_have_text(
            re.compile(r"^(No fracture|Fracture) suspected$")
        )
        heat = page.locator("#heatmap")
        sync_api.expect(heat).to_be_visible()
        page.wait_for_function(
            "() => { const i = document.getElementById('heatmap');"
            " return i.complete && i.naturalWidth > 0; }",
            timeout=10_000,
        )
        assert heat.evaluate("i => i.naturalWidth") == 64
        page.screenshot(path=str(tmp_path / "page.png"))

        # a bad file shows the server's error and the page keeps working
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        page.set_input_files("#file", str(bad))
        sync_api.expect(page.locator("#error")).to_contain_text("not a JPEG, PNG, TIFF or DICOM")
        page.set_input_files("#file", str(image))
        sync_api.expect(page.locator("#result")).to_be_visible(timeout=30_000)
        assert outside == [], f"the page fetched outside resources: {outside}"


@pytest.fixture()
def refer_server_url(tiny_run: Path, synthetic_manifest: Path, tmp_path: Path):
    """The tiny run with an out-of-scope detector whose cut-off lies between the synthetic
    radiographs and a white frame, and a refer rule that refers every in-scope image."""
    import shutil

    import numpy as np

    from bonefrac.evaluation.ood import fit_ood
    from bonefrac.inference.predictor import Predictor
    from bonefrac.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    fit_ood(run, "mahalanobis")
    pred = Predictor.from_run(run)
    images = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))
    inside = pred.ood_scores([pred.prepare(p).array for p in images])
    white = pred.ood_scores([pred.prepare(np.full((64, 64), 255, np.uint8)).array])[0]
    assert white > inside.max()
    raw = RunDir(run).raw_meta()
    ood = {**raw["ood"], "cutoff": float((inside.max() + white) / 2)}
    rule = {"score": "margin", "coverage": 0.5, "cutoff": -1.0, "threshold": raw["threshold"]}
    RunDir(run).update_meta(refer=rule, ood=ood, rule_out=None, rule_out_fit=None)
    yield from _serve(run)


def test_page_shows_refer_and_out_of_scope_instead_of_a_probability(
    refer_server_url, synthetic_manifest, tmp_path
):
    import numpy as np
    from PIL import Image
    from playwright import sync_api

    image = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[0]
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(blank)
    with _page() as page:
        page.goto(refer_server_url + "/")
        page.set_input_files("#file", str(image))
        sync_api.expect(page.locator("#decision")).to_have_text(
            "Doubt: look here (refer to a radiologist)", timeout=30_000
        )
        sync_api.expect(page.locator("#prob-block")).to_be_hidden()
        page.set_input_files("#file", str(blank))
        sync_api.expect(page.locator("#decision")).to_have_text(
            "This does not look like a limb radiograph", timeout=30_000
        )
        sync_api.expect(page.locator("#prob-block")).to_be_hidden()


@pytest.fixture()
def loc_server_url(loc_run: Path):
    yield from _serve(loc_run)


def test_a_fractured_call_shows_its_best_box_as_low_confidence(loc_server_url, synthetic_manifest):
    """A detector's answer with no box above the box threshold: the page draws the best box,
    dashed and marked low-confidence, and captions the map as trained on fracture boxes."""
    import json

    from playwright import sync_api

    image = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[0]
    with _page() as page:
        answer = {  # a detector's fractured call with no box above its box threshold
            "probability": 0.8,
            "decision": "fracture",
            "finding": "firm",
            "finding_text": "fracture (firm finding)",
            "threshold": 0.5,
            "uncertainty": 0.1,
            "refer": False,
            "out_of_scope": False,
            "ood_score": None,
            "ood_reason": None,
            "model": "loc",
            "logit": 1.39,
            "temperature": 1.0,
            "architecture": "simple_cnn",
            "backend": "torch",
            "caveat": "Decision support only, not a diagnosis.",
            "pred_boxes": [],
            "best_box": [0.4, 0.5, 0.2, 0.1, 0.12],
            "map": "detector",
        }

        def fractured_without_box(route):
            route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

        page.route("**/v1/predict*", fractured_without_box)
        page.goto(loc_server_url + "/")
        page.set_input_files("#file", str(image))
        sync_api.expect(page.locator("#decision")).to_have_text(
            "Fracture suspected", timeout=30_000
        )
        box = page.locator("#boxes .box.low")
        sync_api.expect(box).to_have_count(1)
        sync_api.expect(box).to_contain_text("12% (low confidence)")
        sync_api.expect(page.locator("#boxes-note")).to_contain_text("below its box threshold")
        sync_api.expect(page.locator("#map-caption")).to_contain_text(
            "trained on radiologists' fracture boxes"
        )


def test_a_refer_call_draws_its_boxes_dashed_as_doubt(loc_server_url, synthetic_manifest):
    """The two levels as fracture AI shows them: a ``refer`` answer's boxes are dashed and
    say "doubt: look here"; the decision reads as a doubt, not a probability."""
    import json

    from playwright import sync_api

    image = sorted((synthetic_manifest.parent / "images").glob("test_*.png"))[0]
    answer = {
        "probability": 0.3, "decision": "refer", "finding": "doubt",
        "finding_text": "doubt: look here, refer to a radiologist", "threshold": 0.6,
        "uncertainty": 0.3, "refer": True, "out_of_scope": False, "ood_score": None,
        "ood_reason": None, "model": "loc", "logit": -0.85, "temperature": 1.0,
        "architecture": "simple_cnn", "backend": "torch", "caveat": "Decision support only.",
        "pred_boxes": [[0.4, 0.5, 0.2, 0.1, 0.55]], "best_box": [0.4, 0.5, 0.2, 0.1, 0.55],
        "map": "detector",
    }  # fmt: skip
    with _page() as page:
        page.route("**/v1/predict*", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(answer)))  # fmt: skip
        page.goto(loc_server_url + "/")
        page.set_input_files("#file", str(image))
        sync_api.expect(page.locator("#decision")).to_have_text(
            "Doubt: look here (refer to a radiologist)", timeout=30_000
        )
        box = page.locator("#boxes .box.low")
        sync_api.expect(box).to_have_count(1)
        sync_api.expect(box).to_contain_text("55% (doubt: look here)")
        style = box.evaluate("b => getComputedStyle(b).borderTopStyle")
        assert style == "dashed"
        sync_api.expect(page.locator("#boxes-note")).to_contain_text("doubt, look here")


@pytest.fixture()
def card_server_url(tiny_run: Path, tmp_path: Path):
    """A copy of the tiny run with a MODEL_CARD.md (with markup that must stay text)."""
    import shutil

    run = tmp_path / "carded"
    shutil.copytree(tiny_run, run)
    card = (
        "# Model card: tiny-test\n\nA tiny model, **never a diagnosis**. "
        "<img src=x onerror=\"document.title='pwned'\">\n\n## Intended use\n"
        "- Second reader: `fracture` / `no_fracture`.\n\n"
        "| source | images |\n|---|---|\n| synthetic | 30 |\n"
    )
    (run / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    yield from _serve(run)


def test_page_shows_the_model_card_as_text(card_server_url):
    from playwright import sync_api

    with _page() as page:
        page.goto(card_server_url + "/")
        section = page.locator("#model-card")
        sync_api.expect(section).to_be_visible()
        section.locator("summary").click()
        sync_api.expect(section.locator("h2")).to_have_text("Model card: tiny-test")
        sync_api.expect(section.locator("h3")).to_have_text("Intended use")
        sync_api.expect(section.locator("li code").first).to_have_text("fracture")
        sync_api.expect(section.locator("td").first).to_have_text("synthetic")
        sync_api.expect(section.locator("strong")).to_have_text("never a diagnosis")
        sync_api.expect(section.locator("p").first).to_contain_text("<img src=x")  # as text
        assert section.locator("img").count() == 0 and page.title() != "pwned"
