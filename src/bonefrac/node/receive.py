"""The node's Storage SCP (pynetdicom): C-ECHO, and C-STORE of radiographs into the spool.

Only the calling AE titles of the config are accepted (pynetdicom's ``require_calling_aet``:
any other association is rejected with "calling AE title not recognised"), and only
associations addressed to the node's own AE title. A received instance is checked
(:func:`check_instance`) and written to the spool (fsynced) *before* the success status goes
back, so what the modality was told is stored survives a crash. A malformed one gets a
failure status and nothing is stored; the node stays up.
"""

from __future__ import annotations

import io
import logging
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import uid

from bonefrac.config import NodeConfig
from bonefrac.errors import BonefracError
from bonefrac.node.spool import Spool

log = logging.getLogger(__name__)

#: Radiographs (CR; DX for presentation and for processing; Secondary Capture) get a result;
#: CT, MR and US are accepted so that a PACS routing everything to the node sees success,
#: and answered as out of scope (an SR saying so, or nothing: ``out_of_scope``).
RADIOGRAPH_STORAGE = (
    uid.ComputedRadiographyImageStorage,
    uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing,
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)
OTHER_STORAGE = (
    uid.CTImageStorage,
    uid.MRImageStorage,
    uid.UltrasoundImageStorage,
    uid.UltrasoundMultiFrameImageStorage,
)
#: Uncompressed syntaxes plus every compression the default install decodes
#: (:mod:`bonefrac.data.dicom_codecs`).
TRANSFER_SYNTAXES = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: Attributes a received instance must carry: its place in a study, and an image.
REQUIRED = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows",
    "Columns", "BitsAllocated", "PixelData",
)  # fmt: skip


class InvalidInstance(BonefracError):
    """A received dataset the node refuses; ``status`` is the C-STORE failure status."""

    def __init__(self, message: str, status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Received:
    """What the spool keeps of one accepted instance (and the audit log records)."""

    sop_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str


def check_instance(data: bytes, sop_class: str | None = None) -> Received:
    """Parse a received dataset (file meta included) far enough to trust it.

    Refused: unparsable bytes, missing required attributes (:data:`REQUIRED`), UIDs that are
    not valid, a SOP class other than the presentation context's, and uncompressed pixel
    data shorter than Rows x Columns x samples x frames (a truncated transfer).
    """
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings on odd values: not fatal
            ds = pydicom.dcmread(io.BytesIO(data))
            missing = [k for k in REQUIRED if k not in ds]
            values = {k: ds[k].value for k in REQUIRED if k not in missing}
    except Exception as exc:  # noqa: BLE001 - any parser failure is this dataset's
        raise InvalidInstance(f"the dataset cannot be parsed ({exc})") from None
    if missing:
        raise InvalidInstance(f"the dataset has no {', '.join(missing)} (truncated or incomplete)")
    for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not uid.UID(str(values[key])).is_valid:
            raise InvalidInstance(f"{key} {str(values[key])[:70]!r} is not a valid UID")
    if sop_class is not None and str(values["SOPClassUID"]) != sop_class:
        raise InvalidInstance(
            f"SOP Class {values['SOPClassUID']} differs from the presentation context's "
            f"{sop_class}",
            DOES_NOT_MATCH_SOP_CLASS,
        )
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not uid.UID(syntax).is_compressed:
        expected = _native_pixel_bytes(ds)
        got = len(values["PixelData"] or b"")
        if expected is not None and got < expected:
            raise InvalidInstance(
                f"the pixel data is truncated ({got} bytes of {expected} for "
                f"{ds.Rows} x {ds.Columns})"
            )
    return Received(
        str(values["SOPInstanceUID"]), str(values["StudyInstanceUID"]), str(values["SOPClassUID"])
    )


def _native_pixel_bytes(ds: Any) -> int | None:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        pixels = int(ds.Rows) * int(ds.Columns) * samples * frames
    except (TypeError, ValueError):
        return None
    return (pixels * bits + 7) // 8


class StorageSCP:
    """The node's listening side: a pynetdicom AE whose C-STORE handler fills the spool.

    ``on_received``: called after an instance is spooled (the worker's wake-up).
    """

    def __init__(self, config: NodeConfig, spool: Spool, on_received: Callable[[], None]) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.config = config
        self.spool = spool
        self.on_received = on_received
        ae = AE(ae_title=config.ae_title)
        ae.require_calling_aet = list(config.allow)
        ae.require_called_aet = True
        ae.maximum_associations = config.max_associations
        ae.network_timeout = config.send_timeout_s
        ae.dimse_timeout = config.send_timeout_s
        ae.add_supported_context(Verification)
        for sop_class in (*RADIOGRAPH_STORAGE, *OTHER_STORAGE):
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self.ae = ae
        self.handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self.server: Any = None

    def start(self) -> tuple[str, int]:
        """Listen (in pynetdicom's threads); the bound address."""
        self.server = self.ae.start_server(
            (self.config.host, self.config.port),
            block=False,
            evt_handlers=self.handlers,
            ssl_context=tls_context(self.config),
        )
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # --- handlers (pynetdicom's threads, one per association) --------------------------
    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def _on_rejected(self, event: Any) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        self.spool.audit.write("association_rejected", calling_ae=calling, status="rejected")
        log.warning("association from AE %r rejected (not in --allow)", calling)

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        if self.spool.pending_count() >= self.config.max_spool:
            self.spool.audit.write("refused", calling_ae=calling, status=f"0x{OUT_OF_RESOURCES:04X}",
                                   detail=f"spool holds {self.config.max_spool} instances")  # fmt: skip
            return OUT_OF_RESOURCES
        data = event.encoded_dataset(include_meta=True)
        try:
            got = check_instance(data, str(event.context.abstract_syntax))
        except InvalidInstance as exc:
            self.spool.audit.write(
                "refused", calling_ae=calling, status=f"0x{exc.status:04X}", detail=str(exc)
            )
            log.warning("C-STORE from %r refused: %s", calling, exc)
            return exc.status
        try:
            self.spool.receive(got.sop_instance_uid, data)
        except OSError as exc:  # a full or unwritable disk: the modality keeps the image
            self.spool.audit.write(
                "refused", sop_instance_uid=got.sop_instance_uid, calling_ae=calling,
                status=f"0x{OUT_OF_RESOURCES:04X}", detail=f"spool write failed ({exc})",
            )  # fmt: skip
            return OUT_OF_RESOURCES
        self.spool.audit.write(
            "received", sop_instance_uid=got.sop_instance_uid, calling_ae=calling,
            study_instance_uid=got.study_instance_uid, sop_class_uid=got.sop_class_uid,
            status=f"0x{SUCCESS:04X}",
        )  # fmt: skip
        self.on_received()
        return SUCCESS


def tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The server side of TLS when ``tls_cert``/``tls_key`` are set; with ``tls_ca`` a
    calling node must present a certificate that CA signed."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
        if config.tls_ca is not None:
            ctx.load_verify_locations(cafile=str(config.tls_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise InvalidTLS(f"{config.tls_cert} / {config.tls_key}: cannot load ({exc})") from None
    return ctx


class InvalidTLS(BonefracError):
    """The TLS certificate, key or CA bundle cannot be loaded."""
