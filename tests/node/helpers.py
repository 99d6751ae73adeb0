"""Real components for the node's tests and bench/node_throughput.py: an Orthanc PACS started on
free loopback ports, dcmtk's echoscu/storescu as the modality, dicom3tools' dciodvfy, and CR
DICOM files (synthetic, or converted from FracAtlas JPGs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

ORTHANC_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins"))
REQUIRE_ENV = "BONEFRAC_REQUIRE_DICOM_NODE"


def tool(name: str) -> str | None:
    """The path of a Debian tool (Orthanc lives in /usr/sbin, often not on a user's PATH)."""
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).is_file()), None
    )


def dicomweb_plugin() -> Path | None:
    for folder in ORTHANC_PLUGIN_DIRS:
        if (folder / "libOrthancDicomWeb.so").is_file():
            return folder / "libOrthancDicomWeb.so"
    return None


def need_tools(*names: str) -> None:
    """Skip (or, with $BONEFRAC_REQUIRE_DICOM_NODE=1 as .ci/run sets, fail) without them."""
    missing = [n for n in names if tool(n) is None]
    if "Orthanc" in names and dicomweb_plugin() is None:
        missing.append("the orthanc-dicomweb plugin")
    if missing:
        why = f"needs {', '.join(missing)} (Debian: orthanc orthanc-dicomweb dcmtk dicom3tools)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the node test {why}")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- CR files ---------------------------------------------------------------------------


def write_cr(
    path: Path,
    pixels: np.ndarray,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    modality: str = "CR",
    sop_class: str = ComputedRadiographyImageStorage,
    laterality: str | None = "L",
    instance: int = 1,
) -> Path:
    """A CR (or another modality's) image as a PACS export carries it: patient, study,
    series, body part; ``pixels`` uint8 or uint16 greyscale."""
    arr = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientName = "Node^Test"
    ds.PatientID = "NODE0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    ds.StudyID, ds.AccessionNumber = "1", "ACC-NODE"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, instance
    ds.BodyPartExamined = "HAND"
    if laterality:
        ds.Laterality = laterality
    ds.PatientOrientation = ""
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def synthetic_radiograph(seed: int = 0, size: tuple[int, int] = (320, 256)) -> np.ndarray:
    """A grey 12-bit 'limb': two bright bones on soft tissue, with noise (uint16)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w), 600.0) + rng.normal(0, 40, (h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    img += 900 * (np.abs(xx - w * 0.4) < w * 0.06) + 800 * (np.abs(xx - w * 0.62) < w * 0.05)
    img[yy < h * 0.05] = 100
    return np.clip(img, 0, 4095).astype(np.uint16)


def jpg_to_cr(jpg: Path, out: Path, study_uid: str | None = None) -> Path:
    """A FracAtlas JPG as an 8-bit CR file (the radiograph as its JPG shows it)."""
    from PIL import Image

    with Image.open(jpg) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.uint8)
    return write_cr(out, pixels, study_uid=study_uid, laterality=None)


# --- dcmtk and dicom3tools ----------------------------------------------------------------


def echoscu(port: int, calling: str, called: str = "BONEFRAC") -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("echoscu") or "echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def storescu(
    port: int, files: list[Path], calling: str, called: str = "BONEFRAC"
) -> subprocess.CompletedProcess:
    """dcmtk's storescu sends ``files`` over one association, as a modality would."""
    return subprocess.run(
        [tool("storescu") or "storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def dciodvfy_errors(data: bytes, tmp: Path) -> list[str]:
    """The ``Error`` lines dicom3tools' dciodvfy prints for one DICOM file."""
    path = tmp / f"check-{time.monotonic_ns()}.dcm"
    path.write_bytes(data)
    done = subprocess.run(
        [tool("dciodvfy") or "dciodvfy", str(path)], capture_output=True, text=True, timeout=60
    )
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


# --- Orthanc ------------------------------------------------------------------------------


class Orthanc:
    """An Orthanc PACS with the DICOMweb plugin on loopback, its config and storage in
    ``folder``; stop() and start() again keep its ports and its database."""

    def __init__(self, folder: Path, aet: str = "ORTHANC") -> None:
        self.folder = folder
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bonefrac-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "StorageCompression": False,
            "HttpDescribeErrors": True,
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 60.0) -> Orthanc:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [tool("Orthanc") or "Orthanc", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: see {self.folder / 'orthanc.log'}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer on its REST port")

    def stop(self, graceful: bool = True) -> None:
        """SIGTERM and wait (about 3 s); ``graceful=False``: SIGKILL (a test's clean-up)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, data: Any) -> Any:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(data).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def instances(self, study_uid: str | None = None) -> list[str]:
        """Orthanc's ids of every instance (of one study)."""
        if study_uid is None:
            return list(self.get("/instances"))
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}
        return list(self.post("/tools/find", query))

    def file(self, instance_id: str) -> bytes:
        return bytes(self.get(f"/instances/{instance_id}/file"))

    def datasets(self, study_uid: str | None = None) -> list[pydicom.Dataset]:
        import io

        return [pydicom.dcmread(io.BytesIO(self.file(i))) for i in self.instances(study_uid)]

    def wait_for(self, count: int, timeout: float, study_uid: str | None = None) -> list[str]:
        """Wait until Orthanc holds at least ``count`` instances (of the study)."""
        end = time.monotonic() + timeout
        found: list[str] = []
        while time.monotonic() < end:
            found = self.instances(study_uid)
            if len(found) >= count:
                return found
            time.sleep(0.25)
        return found

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(graceful=False)
