"""What ``bonefrac predict --dicom-out`` costs per DICOM input, and how big its files are.

Wraps N FracAtlas radiographs (../shared/data) as 8-bit DX DICOMs of one study, then predicts
them with an untrained model of the chosen architecture (the compute is the trained model's)
twice: plain, and with ``--dicom-out`` (Grad-CAM + Secondary Capture + SR per file).

    BONEFRAC_DATA=../shared/data PYTHONPATH=src python bench/dicom_out.py --model efficientnet_lite0 --n 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import make_untrained_run  # noqa: E402

#: $BONEFRAC_DATA (as the tests read it), else ../shared/data beside the checkout.
DATA = (
    Path(os.environ.get("BONEFRAC_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    / "fracatlas"
    / "images"
)


def make_dicoms(folder: Path, n: int) -> list[Path]:
    import highdicom as hd
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

    study, series = hd.UID(), hd.UID()
    paths = []
    for i, jpg in enumerate(sorted((DATA / "Fractured").glob("*.jpg"))[:n]):
        arr = np.asarray(Image.open(jpg).convert("L"))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        meta.MediaStorageSOPInstanceUID = hd.UID()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(jpg), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = (
            meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientName, ds.PatientID, ds.InstanceNumber = "DX", "Bench^X", "B1", i + 1
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        path = folder / f"{jpg.stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main() -> None:
    from bonefrac.batch_predict.job import predict_to_csv
    from bonefrac.config import PredictConfig
    from bonefrac.inference.predictor import Predictor

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: not found (the shared FracAtlas copy)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "in").mkdir()
        files = make_dicoms(tmp / "in", args.n)
        run = make_untrained_run(args.model, args.size, tmp / "run")
        predictor = Predictor.from_run(run)
        times = {}
        for label, out_dir in (("plain", None), ("dicom-out", tmp / "dicom")):
            start = time.perf_counter()
            config = PredictConfig(progress=False, dicom_out=out_dir)
            predict_to_csv(run, files, tmp / f"{label}.csv", config, predictor=predictor)
            times[label] = (time.perf_counter() - start) / len(files)
        sizes = sorted((tmp / "dicom").iterdir())
        sc = [p.stat().st_size for p in sizes if p.name.endswith("_sc.dcm")]
        sr = [p.stat().st_size for p in sizes if p.name.endswith("_sr.dcm")]
    print(f"{args.model} {args.size} px, {len(files)} DICOMs (FracAtlas, long side <= 1024 px)")
    print(f"plain predict: {times['plain'] * 1000:.0f} ms/image")
    print(f"--dicom-out:   {times['dicom-out'] * 1000:.0f} ms/image "
          f"(+{(times['dicom-out'] - times['plain']) * 1000:.0f} ms: Grad-CAM, SC, SR)")  # fmt: skip
    print(f"SC {np.mean(sc) / 1e6:.2f} MB, SR {np.mean(sr) / 1e3:.1f} kB per input (mean)")


if __name__ == "__main__":
    main()
