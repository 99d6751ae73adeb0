"""The node against real components: dcmtk's echoscu/storescu as the modality, Orthanc (with its
DICOMweb plugin) as the PACS, dicom3tools' dciodvfy as the validator. Each test starts what it
needs on free loopback ports and stops it; without the Debian packages they skip (fail with
BONEFRAC_REQUIRE_DICOM_NODE=1, as .ci/run sets)."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import CTImageStorage, generate_uid

from bonefrac.rundir import RunDir
from tests.node.conftest import MODALITY
from tests.node.helpers import (
    dciodvfy_errors,
    echoscu,
    free_port,
    need_tools,
    storescu,
    synthetic_radiograph,
    write_cr,
)

SC = pydicom.uid.SecondaryCaptureImageStorage
SR = pydicom.uid.ComprehensiveSRStorage


def by_class(datasets: list[pydicom.Dataset]) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out


def cr_files(folder: Path, n: int, study: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study = study or generate_uid()
    return [
        write_cr(folder / f"img{i}.dcm", synthetic_radiograph(i), study_uid=study, instance=i + 1)
        for i in range(n)
    ]


def test_echo_store_results_validate_and_unknown_ae_rejected(make_node, orthanc, tmp_path):
    """echoscu succeeds; storescu of a CR gives an SC, an SR and a study SR in the study of the
    sent image (dciodvfy: no error on any); a CT gets an SR saying out of scope and no capture;
    a calling AE not in --allow is rejected; the audit log names no patient."""
    need_tools("echoscu", "storescu", "dciodvfy")
    node = make_node(send_to=[orthanc.destination], study_quiet_s=0.3)
    port = node.address[1]
    assert echoscu(port, MODALITY).returncode == 0
    refused = echoscu(port, "INTRUDER")
    assert refused.returncode != 0
    assert "reject" in (refused.stdout + refused.stderr).lower()

    (cr,) = cr_files(tmp_path / "in", 1)
    ct = write_cr(tmp_path / "in" / "ct.dcm", synthetic_radiograph(9), modality="CT",
                  sop_class=CTImageStorage)  # fmt: skip
    sent = storescu(port, [cr, ct], MODALITY)
    assert sent.returncode == 0, sent.stderr
    assert storescu(port, [cr], "INTRUDER").returncode != 0  # rejected: nothing spooled
    assert node.wait_idle(120)

    source = pydicom.dcmread(cr)
    got = by_class(orthanc.datasets(str(source.StudyInstanceUID)))
    assert len(got[SC]) == 1 and len(got[SR]) == 2  # image SR + study SR
    capture = got[SC][0]
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert capture.Laterality == "L" and capture.SeriesInstanceUID != source.SeriesInstanceUID
    reports = sorted(got[SR], key=lambda ds: int(ds.SeriesNumber))
    image_sr = hd.sr.srread(io.BytesIO(orthanc_bytes(reports[0])))
    (group,) = image_sr.content.get_image_measurement_groups()
    assert group.finding_type.value == "125605004"  # SNOMED CT Fracture of bone
    decision = group.get_qualitative_evaluations()[-1].value.value
    assert decision in ("fracture", "no_fracture", "refer")
    assert reports[1].SeriesDescription.endswith("study report")
    for ds in [capture, *reports]:
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == "NODE0001"
        assert dciodvfy_errors(orthanc_bytes(ds), tmp_path) == []

    ct_results = by_class(orthanc.datasets(str(pydicom.dcmread(ct).StudyInstanceUID)))
    assert SC not in ct_results  # out of scope: a report, no capture, no fracture call
    ct_sr = hd.sr.srread(io.BytesIO(orthanc_bytes(ct_results[SR][0])))
    (ct_group,) = ct_sr.content.get_image_measurement_groups()
    assert ct_group.get_measurements() == []
    assert ct_group.get_qualitative_evaluations()[-1].value.value == "out_of_scope"

    audit = node.spool.audit.path.read_text()
    assert "Node^Test" not in audit and "NODE0001" not in audit and "19700101" not in audit
    events = [r["event"] for r in node.spool.audit.records()]
    assert events.count("association_rejected") == 2 and events.count("received") == 2
    assert not list((node.spool.root / "incoming").glob("*.dcm"))


def orthanc_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_truncated_or_malformed_dataset_refused_and_node_stays_up(make_node, orthanc, tmp_path):
    """A truncated transfer and a dataset without pixel data get failure statuses and nothing
    is spooled; the node then still answers and predicts."""
    need_tools("storescu")
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

    node = make_node(send_to=[orthanc.destination])
    good, bare = cr_files(tmp_path / "in", 2)
    ds = pydicom.dcmread(bare)
    del ds.PixelData
    ds.save_as(bare, enforce_file_format=True)
    truncated = tmp_path / "in" / "truncated.dcm"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) - len(data) // 3])

    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title="BONEFRAC")
    assert assoc.is_established
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    try:
        status = assoc.send_c_store(truncated)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assert status.Status == 0xC000
    assert assoc.send_c_store(pydicom.dcmread(bare)).Status == 0xC000
    assert assoc.send_c_echo().Status == 0x0000  # the node is up, the association too
    assoc.release()
    assert not list((node.spool.root / "incoming").glob("*.dcm"))
    refusals = [r for r in node.spool.audit.records() if r["event"] == "refused"]
    assert [r["status"] for r in refusals] == ["0xC000", "0xC000"]
    assert "truncated" in refusals[0]["detail"] and "PixelData" in refusals[1]["detail"]

    assert storescu(node.address[1], [good], MODALITY).returncode == 0
    assert node.wait_idle(60)
    assert len(orthanc.wait_for(2, 10)) == 2


def test_stow_rs_delivers_to_dicomweb(make_node, orthanc, tmp_path):
    need_tools("storescu")
    node = make_node(stow_to=[orthanc.dicomweb])
    (cr,) = cr_files(tmp_path / "in", 1)
    assert storescu(node.address[1], [cr], MODALITY).returncode == 0
    assert node.wait_idle(60)
    got = by_class(orthanc.datasets(str(pydicom.dcmread(cr).StudyInstanceUID)))
    assert len(got[SC]) == 1 and len(got[SR]) == 1
    sent = [r for r in node.spool.audit.records() if r["event"] == "sent"]
    assert {r["destination"] for r in sent} == {orthanc.dicomweb} and len(sent) == 2


def test_pacs_outage_is_retried_and_delivered_once(make_node, orthanc, tmp_path):
    """Orthanc stopped in the middle of a burst and started again: every result arrives,
    none twice, nothing in the dead-letter folder."""
    need_tools("storescu")
    node = make_node(send_to=[orthanc.destination], retry_backoff_s=0.2, retry_max_backoff_s=1.0)
    files = cr_files(tmp_path / "in", 4)
    assert storescu(node.address[1], files[:1], MODALITY).returncode == 0
    assert len(orthanc.wait_for(2, 60)) == 2
    orthanc.stop()
    assert storescu(node.address[1], files[1:], MODALITY).returncode == 0
    outbox = node.senders[0].outbox
    deadline = time.monotonic() + 60
    while len(list(outbox.glob("*.dcm"))) < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(list(outbox.glob("*.dcm"))) == 6  # waiting for the PACS, not lost
    time.sleep(1.5)  # a few failed rounds
    orthanc.start()
    assert node.wait_idle(60)
    stored = orthanc.datasets()
    uids = [str(ds.SOPInstanceUID) for ds in stored]
    assert len(uids) == 8 and len(set(uids)) == 8
    sources = sorted(str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
                     for ds in stored if ds.SOPClassUID == SC)  # fmt: skip
    assert sources == sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
    assert not list((node.spool.root / "dead").rglob("*.dcm"))
    records = node.spool.audit.records()
    assert sum(r["event"] == "sent" for r in records) == 8


def test_unreachable_destination_dead_letters_with_the_reason(make_node, tmp_path):
    need_tools("storescu")
    node = make_node(send_to=[f"NOBODY@127.0.0.1:{free_port()}"], retry_attempts=2,
                     retry_backoff_s=0.1, retry_max_backoff_s=0.2)  # fmt: skip
    (cr,) = cr_files(tmp_path / "in", 1)
    assert storescu(node.address[1], [cr], MODALITY).returncode == 0
    assert node.wait_idle(60)
    dead = node.spool.root / "dead" / node.senders[0].destination.key
    assert len(list(dead.glob("*.dcm"))) == 2
    reason = json.loads(next(dead.glob("*.reason.json")).read_text())
    assert reason["attempts"] == 2 and "NOBODY@127.0.0.1" in reason["reason"]
    assert sum(r["event"] == "dead_letter" for r in node.spool.audit.records()) == 2


@pytest.mark.parametrize("n", [16])
def test_node_killed_mid_burst_finishes_its_spool_after_restart(tiny_run, orthanc, tmp_path, n):
    """``bonefrac node`` SIGKILLed while instances wait in its spool, then started again on the
    same spool: every instance gets its SC and SR, each once."""
    need_tools("storescu")
    from tests.cli_subprocess import bonefrac_command, cli_env

    port, spool = free_port(), tmp_path / "spool"
    command = [*bonefrac_command(), "node", str(tiny_run), "--port", str(port), "--allow",
               MODALITY, "--send-to", orthanc.destination, "--spool", str(spool),
               "--set", "study_quiet_s=null"]  # fmt: skip
    files = cr_files(tmp_path / "in", n)

    def start() -> subprocess.Popen:
        with open(tmp_path / "node.log", "ab") as log:  # the child keeps its own handle
            proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if echoscu(port, MODALITY).returncode == 0:
                return proc
            time.sleep(0.3)
        raise AssertionError((tmp_path / "node.log").read_text()[-3000:])

    proc = start()
    assert storescu(port, files, MODALITY).returncode == 0
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.wait(30)
    waiting = len(list((spool / "incoming").glob("*.dcm")))
    assert waiting > 0, "the node finished before the kill; the test proves nothing"
    proc = start()
    try:
        deadline = time.monotonic() + 300  # generous: the CPU may be shared
        while time.monotonic() < deadline and (
            list((spool / "incoming").glob("*.dcm")) or list((spool / "outbox").rglob("*.dcm"))
        ):
            time.sleep(0.2)
        found = orthanc.wait_for(2 * n, 30)
    finally:
        proc.terminate()
        proc.wait(60)
    assert len(found) == 2 * n, f"{len(found)} results for {n} instances ({waiting} spooled)"
    stored = orthanc.datasets()
    captures = [str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
                for ds in stored if ds.SOPClassUID == SC]  # fmt: skip
    assert sorted(captures) == sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
    assert not list((spool / "incoming").glob("*.dcm"))


def fracatlas_crs(folder: Path, n: int) -> list[Path]:
    """``n`` FracAtlas radiographs (half fractured) as CR files of one study; [] without the
    shared data."""
    from tests.conftest import shared_data_dir
    from tests.node.helpers import jpg_to_cr

    data = shared_data_dir()
    if data is None:
        return []
    images = data / "fracatlas" / "images"
    picks = sorted((images / "Fractured").glob("*.jpg"))[: n // 2]
    picks += sorted((images / "Non_fractured").glob("*.jpg"))[: n - len(picks)]
    study = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    return [jpg_to_cr(p, folder / f"{p.stem}.dcm", study) for p in picks]


def test_shipped_default_end_to_end_from_a_config_file(orthanc, tmp_path):
    """``bonefrac node`` with no RUN (the shipped default) and its options in a YAML file:
    storescu of a CR (and of two FracAtlas radiographs, where the shared data is) gives an SC
    and an SR per image in Orthanc's study, which dciodvfy passes without errors."""
    need_tools("storescu", "echoscu", "dciodvfy")
    from tests.cli_subprocess import bonefrac_command, cli_env

    port = free_port()
    config = tmp_path / "node.yaml"
    config.write_text(
        f"ae_title: FRACNODE\nport: {port}\nallow: [{MODALITY}]\n"
        f"send_to: ['{orthanc.destination}']\nspool: {tmp_path / 'spool'}\nstudy_quiet_s: null\n"
    )
    files = cr_files(tmp_path / "in", 1) + fracatlas_crs(tmp_path / "fracatlas", 2)
    # what the shipped model answers each file (a synthetic CR does not look like a
    # radiograph to its appearance rule): an out-of-scope input gets an SR and no SC
    import bonefrac

    model = bonefrac.load("default")
    in_scope = {p: model.predict(p).decision != "out_of_scope" for p in files}
    expected = sum(2 if ok else 1 for ok in in_scope.values())
    with open(tmp_path / "node.log", "ab") as log:
        proc = subprocess.Popen([*bonefrac_command(), "node", "--config", str(config)],
                                env=cli_env(), stdout=log, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while echoscu(port, MODALITY, "FRACNODE").returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "node.log"
            ).read_text()[-3000:]
            time.sleep(0.3)
        assert storescu(port, files, MODALITY, "FRACNODE").returncode == 0
        found = orthanc.wait_for(expected, 180)
    finally:
        proc.terminate()
        proc.wait(60)
    assert len(found) == expected, (tmp_path / "node.log").read_text()[-3000:]
    for path in files:
        source = pydicom.dcmread(path)
        got = by_class(orthanc.datasets(str(source.StudyInstanceUID)))
        captures = [ds for ds in got.get(SC, [])
                    if ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID]  # fmt: skip
        shipped_name = RunDir.open("default").shipped  # the versioned name, never the alias
        assert len(captures) == (1 if in_scope[path] else 0)
        assert all(shipped_name in ds.SeriesDescription for ds in captures)
    for ds in orthanc.datasets():
        assert dciodvfy_errors(orthanc_bytes(ds), tmp_path) == []
    decisions = [r["decision"] for r in json_lines(tmp_path / "spool" / "audit.jsonl")
                 if r["event"] == "predicted"]  # fmt: skip
    assert len(decisions) == len(files)
    assert set(decisions) <= {"fracture", "no_fracture", "refer", "out_of_scope"}


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tls_association_with_a_client_certificate(make_node, orthanc, tmp_path):
    """With tls_cert/tls_key/tls_ca the node speaks TLS only: a caller with a certificate the
    CA signed stores an image; a plain-TCP caller gets no association."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    for name in ("node", "modality"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-copy_extensions", "copy",
                "-out", f"{name}.pem")  # fmt: skip
    node = make_node(send_to=[orthanc.destination], tls_cert=tmp_path / "node.pem",
                     tls_key=tmp_path / "node.key", tls_ca=tmp_path / "ca.pem")  # fmt: skip
    (cr,) = cr_files(tmp_path / "in", 1)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp_path / "ca.pem"))
    client.load_cert_chain(str(tmp_path / "modality.pem"), str(tmp_path / "modality.key"))
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title="BONEFRAC",
                         tls_args=(client, "127.0.0.1"))  # fmt: skip
    assert assoc.is_established
    assert assoc.send_c_store(pydicom.dcmread(cr)).Status == 0x0000
    assoc.release()
    plain = ae.associate("127.0.0.1", node.address[1], ae_title="BONEFRAC")
    assert not plain.is_established
    assert node.wait_idle(60) and len(orthanc.wait_for(2, 10)) == 2
