"""Behaviour fingerprint of a refactor: train, predict, evaluate and explain two tiny seeded runs.

Trains a classification-only and a localising ``simple_cnn`` with ``train.deterministic=true``
on a synthetic set, then runs ``bonefrac predict`` (PNG and DICOM inputs, ``--dicom-out``),
``evaluate``, ``explain --score`` and the API's ``POST /v1/predict?dicom=true``, and prints a
JSON of digests: the logits of every predictions CSV (as float32 bytes), metrics.json (canonical
JSON), the predict CSV's answers, the explain outputs and the DICOM Secondary Captures' pixels.
Run it before and after an internal change; the two JSONs must be equal, and
``sc_predict_equals_serve`` true for the localising run::

    python bench/house_identity.py --out /tmp/before.json
    python bench/house_identity.py --out /tmp/after.json && diff /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.inference.dicom_files import write_dicom  # noqa: E402
from tests.synthetic import FAST_OVERRIDES, make_manifest  # noqa: E402

#: predict-CSV columns whose values must not move (paths and timings may)
ANSWER_COLUMNS = [
    "prob",
    "decision",
    "uncertainty",
    "refer",
    "out_of_scope",
    "ood_score",
    "logit",
    "threshold",
    "pred_boxes",
    "ood_reason",
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def bonefrac(*args: str) -> None:
    cmd = [sys.executable, "-m", "bonefrac", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")


def logits_digest(csv: Path) -> str:
    frame = pd.read_csv(csv)
    return sha(frame["logit"].to_numpy(np.float32).tobytes())


def metrics_digest(path: Path) -> str:
    data = json.loads(path.read_text())
    return sha(json.dumps(data, sort_keys=True).encode())


def sc_pixels(path_or_bytes: Path | bytes) -> str:
    import pydicom

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return sha(pydicom.dcmread(src).PixelData)


def serve_sc(run: Path, dicom: Path) -> str:
    from fastapi.testclient import TestClient

    from bonefrac.serving.app import create_app

    client = TestClient(create_app(run))
    with open(dicom, "rb") as fh:
        resp = client.post(
            "/v1/predict?dicom=true", files={"file": (dicom.name, fh, "application/dicom")}
        )
    resp.raise_for_status()
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        name = next(n for n in zf.namelist() if "sc" in n.lower())
        return sc_pixels(zf.read(name))


def study_dicom(path: Path, image: Path) -> Path:
    """A DX file of ``image`` with the study attributes DICOM output needs (fixed UIDs)."""
    import pydicom
    from PIL import Image

    write_dicom(path, np.asarray(Image.open(image)))
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientID = "P0001"
    ds.save_as(path)
    return path


def fingerprint(work: Path, name: str, overrides: list[str], manifest: Path) -> dict:
    run = work / name
    sets = [x for o in overrides for x in ("--set", o)]
    bonefrac("train", "--manifest", str(manifest), "--out", str(run), "--force", *sets)
    images = sorted((manifest.parent / "images").glob("test_*.png"))[:6]
    dicom = study_dicom(work / f"{name}_scan.dcm", images[0])
    pred_csv = work / f"{name}_pred.csv"
    dicom_dir = work / f"{name}_dicom_out"
    bonefrac(
        "predict",
        str(run),
        *map(str, images),
        str(dicom),
        "--out",
        str(pred_csv),
        "--dicom-out",
        str(dicom_dir),
        "--force",
    )
    bonefrac("evaluate", str(run), "--split", "test")
    bonefrac("explain", str(run), "--split", "test", "--n", "4", "--score")
    answers = pd.read_csv(pred_csv, dtype=str, keep_default_na=False)
    out = {
        "val_logits": logits_digest(run / "predictions" / "val.csv"),
        "test_logits": logits_digest(run / "predictions" / "test.csv"),
        "metrics": metrics_digest(run / "metrics.json"),
        "predict_answers": sha(answers[ANSWER_COLUMNS].to_csv(index=False).encode()),
    }
    explain_dir = run / "explain"
    for f in sorted(explain_dir.rglob("*")) if explain_dir.is_dir() else []:
        if f.is_file() and f.suffix == ".png":
            out[f"explain/{f.relative_to(explain_dir)}"] = sha(f.read_bytes())
        elif f.is_file() and f.suffix in {".csv", ".json"}:  # they name the temporary folder
            text = f.read_text(encoding="utf-8").replace(str(work), "WORK")
            out[f"explain/{f.relative_to(explain_dir)}"] = sha(text.encode())
    scs = sorted(p for p in dicom_dir.rglob("*") if p.is_file() and "sc" in p.name.lower())
    out["sc_predict"] = sc_pixels(scs[0]) if scs else None
    out["sc_serve"] = serve_sc(run, dicom)
    out["sc_predict_equals_serve"] = out["sc_predict"] == out["sc_serve"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = make_manifest(work / "data", {"train": 120, "val": 30, "test": 30}, 64, 0.5)
        base = [*FAST_OVERRIDES, "train.deterministic=true", "seed=7"]
        result = {
            "classifier": fingerprint(work, "cls", base, manifest),
            "localising": fingerprint(work, "loc", [*base, "model.localize=true"], manifest),
        }
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
