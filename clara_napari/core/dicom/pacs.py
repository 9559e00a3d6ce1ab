"""A PACS: fetch a series over DICOMweb (QIDO-RS + WADO-RS), send a SEG back (STOW-RS or C-STORE).

Whatever a PACS sends is hostile input: the retrieved instances are checked (study/series UIDs
as asked, the instance set QIDO-RS announced, a bounded count) and written under names of our
own into a private temporary folder, which is then read like any input. A store counts as done
only when the PACS answers it stored the instance (STOW-RS: no failed SOP, the instance among
the referenced ones, then found by QIDO-RS; C-STORE: status 0x0000). Every failure is one
:class:`~clara_napari.core.errors.PacsError` sentence naming the PACS; credentials (headers, TLS
keys) are never put into a message or a log line.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PacsError

log = logging.getLogger(__name__)

#: Refuse a series with more instances than this.
MAX_INSTANCES = 5000
#: Refuse a series whose retrieved files add up to more than this.
MAX_SERIES_BYTES = 16 * 1024**3
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
IMAGE_MODALITIES = {"CT", "MR", "PT", "NM", "US", "XA", "CR", "DX", "MG", "OT", "RF"}


def check_uid(value: str, what: str) -> str:
    value = (value or "").strip()
    if not _UID.fullmatch(value) or len(value) > 64:
        raise PacsError(f"{what} {value[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters).")
    return value


def _redact(url: str) -> str:
    """The PACS address without any user:password part."""
    return re.sub(r"//[^/@]*@", "//", url)


@dataclass
class Pacs:
    """A DICOMweb PACS: its base URL (``.../dicom-web``), request headers and TLS files."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^\s/]+", self.url or ""):
            raise PacsError(f"PACS {self.url!r}: not an http:// or https:// DICOMweb address.")
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise PacsError(f"PACS {self.name}: a client certificate needs both --pacs-ssl-cert and --pacs-ssl-key.")
        for path in (self.ssl_ca, self.ssl_cert, self.ssl_key):
            if path and not Path(path).is_file():
                raise PacsError(f"PACS {self.name}: the TLS file {path} does not exist.")

    @property
    def name(self) -> str:
        return _redact(self.url.rstrip("/"))

    def client(self):
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.trust_env = False            # no proxies or .netrc credentials picked up behind the user's back
        if self.ssl_ca:
            session.verify = self.ssl_ca
        if self.ssl_cert:
            session.cert = (self.ssl_cert, self.ssl_key)
        session.headers.update(self.headers)
        client = DICOMwebClient(self.url.rstrip("/"), session=session, timeout=self.timeout_s)
        # its default retries every failure (a refused connection too) 5 times over 30 s: fail fast instead
        client.set_http_retry_params(retry=False)
        return client

    # -- errors -------------------------------------------------------------------------------
    def _fail(self, exc: BaseException, doing: str) -> PacsError:
        import requests

        if isinstance(exc, requests.exceptions.SSLError):
            return PacsError(f"PACS {self.name}: TLS failed while {doing} (check --pacs-ssl-ca and the certificates).")
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return PacsError(f"PACS {self.name}: cannot connect while {doing} (is it running and reachable?).")
        if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
            code = exc.response.status_code
            why = {401: "authentication required or refused (check --pacs-header)", 403: "access forbidden",
                   404: "not found (check the DICOMweb address)"}.get(code, exc.response.reason or "error")
            return PacsError(f"PACS {self.name}: HTTP {code} while {doing}: {why}.")
        return PacsError(f"PACS {self.name}: {doing} failed ({type(exc).__name__}).")

    # -- query and retrieve ----------------------------------------------------------------------
    def find_series(self, study: str, series: str | None = None) -> tuple[str, int]:
        """The image series of ``study`` to segment (``series`` if given) and its instance count."""
        study = check_uid(study, "study UID")
        if series:
            series = check_uid(series, "series UID")
        try:
            found = self.client().search_for_series(study_instance_uid=study, get_remaining=True)
        except Exception as exc:
            raise self._fail(exc, f"searching study {study}") from exc
        rows = []
        for item in found or []:
            uid = _value(item, "0020000E")
            modality = _value(item, "00080060")
            if uid:
                rows.append((uid, modality))
        if not rows:
            raise PacsError(f"PACS {self.name}: no series found in study {study}.")
        if series:
            if series not in {uid for uid, _ in rows}:
                raise PacsError(f"PACS {self.name}: study {study} has no series {series}.")
            chosen = series
        else:
            images = [uid for uid, modality in rows if modality in IMAGE_MODALITIES]
            if len(images) != 1:
                listed = ", ".join(f"{uid} ({modality or '?'})" for uid, modality in rows)
                raise PacsError(f"PACS {self.name}: study {study} holds {len(images)} image series; choose one with "
                                f"--series ({listed}).")
            chosen = images[0]
        expected = self.instance_uids(study, chosen)
        if not expected:
            raise PacsError(f"PACS {self.name}: series {chosen} has no instances.")
        return chosen, len(expected)

    def instance_uids(self, study: str, series: str) -> set[str]:
        try:
            found = self.client().search_for_instances(study_instance_uid=study, series_instance_uid=series,
                                                       get_remaining=True)
        except Exception as exc:
            raise self._fail(exc, f"listing the instances of series {series}") from exc
        uids = {uid for item in found or [] if (uid := _value(item, "00080018")) is not None}
        if len(uids) > MAX_INSTANCES:
            raise PacsError(f"PACS {self.name}: series {series} has {len(uids)} instances, more than the "
                            f"{MAX_INSTANCES} fetched here.")
        return uids

    def fetch_series(self, study: str, series: str | None, dest: Path) -> tuple[Path, str]:
        """Retrieve the series into a new private folder under ``dest``; returns it and the series UID."""
        import pydicom

        study = check_uid(study, "study UID")
        series, _ = self.find_series(study, series)
        expected = self.instance_uids(study, series)
        folder = Path(tempfile.mkdtemp(prefix="series-", dir=dest))
        os.chmod(folder, 0o700)
        target = folder / series.replace(".", "_")[-48:]
        target.mkdir(mode=0o700)
        seen: set[str] = set()
        total = 0
        try:
            for k, ds in enumerate(self.client().iter_series(study, series)):
                if k >= len(expected):
                    raise PacsError(f"PACS {self.name}: series {series} returned more instances than the "
                                    f"{len(expected)} it lists.")
                uid = str(getattr(ds, "SOPInstanceUID", ""))
                if (str(getattr(ds, "StudyInstanceUID", "")) != study or str(getattr(ds, "SeriesInstanceUID", "")) != series
                        or uid not in expected or uid in seen):
                    raise PacsError(f"PACS {self.name}: series {series} returned an instance that is not one it "
                                    "lists; refused.")
                seen.add(uid)
                written = target / f"{k + 1:05d}.dcm"
                pydicom.dcmwrite(written, ds, enforce_file_format=True)
                total += written.stat().st_size
                if total > MAX_SERIES_BYTES:
                    raise PacsError(f"PACS {self.name}: series {series} holds more than "
                                    f"{MAX_SERIES_BYTES // 1024**3} GiB; refused.")
        except PacsError:
            raise
        except Exception as exc:
            raise self._fail(exc, f"retrieving series {series}") from exc
        if seen != expected:
            raise PacsError(f"PACS {self.name}: retrieved {len(seen)} of the {len(expected)} instances of series "
                            f"{series}; the retrieve is incomplete.")
        log.info("PACS %s: retrieved %d instances of series %s", self.name, len(seen), series)
        return target, series

    # -- store ----------------------------------------------------------------------------------
    def store(self, path: Path | str) -> str:
        """STOW-RS one DICOM file; returns its SOP Instance UID once the PACS holds it."""
        import pydicom

        path = Path(path)
        ds = pydicom.dcmread(path)
        uid, study, series = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        try:
            answer = self.client().store_instances([ds], study_instance_uid=study)
        except Exception as exc:
            raise self._fail(exc, f"storing {path.name}") from exc
        failed = getattr(answer, "FailedSOPSequence", None) if answer is not None else None
        if failed:
            reason = getattr(failed[0], "FailureReason", "?")
            raise PacsError(f"PACS {self.name}: refused to store {path.name} (failure reason {reason}).")
        stored = {str(getattr(item, "ReferencedSOPInstanceUID", "")) for item in
                  (getattr(answer, "ReferencedSOPSequence", None) or [])}
        if uid not in stored:
            raise PacsError(f"PACS {self.name}: did not confirm storing {path.name}.")
        if uid not in self.instance_uids(study, series):
            raise PacsError(f"PACS {self.name}: confirmed storing {path.name} but does not list it.")
        log.info("PACS %s: stored %s (%s)", self.name, path.name, uid)
        return uid


def _value(item: dict, tag: str) -> str | None:
    try:
        value = item[tag]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None
    return str(value) if isinstance(value, (str, int, float)) else None


# -- DIMSE ------------------------------------------------------------------------------------
def parse_dimse_address(text: str) -> tuple[str, str, int]:
    """``AET@host:port`` → (AE title, host, port)."""
    match = re.fullmatch(r"([ -\[\]-~]{1,16})@([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):([0-9]{1,5})", text or "")
    if not match or not 0 < int(match.group(3)) < 65536 or not match.group(1).strip():
        raise PacsError(f"{text!r} is not AET@host:port (an AE title of at most 16 characters, a host and a port).")
    return match.group(1).strip(), match.group(2).strip("[]"), int(match.group(3))


def c_store(address: str, path: Path | str, *, calling_aet: str = "CLARA_NAPARI", timeout_s: float = 30.0) -> str:
    """C-STORE one DICOM file to ``AET@host:port``; returns its SOP Instance UID once stored.

    Stored means status 0x0000 and, when the node answers C-FIND (Study Root, IMAGE level), the
    node then finding the instance: some PACS answer success to a store their filters dropped.
    """
    # pynetdicom makes its SOP class names with globals() at import: its py.typed module does not show them
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    aet, host, port = parse_dimse_address(address)
    path = Path(path)
    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    where = f"{aet}@{host}:{port}"
    assoc = ae.associate(host, port, ae_title=aet)
    if not assoc.is_established:
        reason = "rejected the association" if assoc.is_rejected else "cannot be reached"
        raise PacsError(f"DICOM node {where}: {reason} (C-STORE of {path.name}).")
    try:
        status = assoc.send_c_store(ds)
        code = getattr(status, "Status", None) if status else None
        if code is None:
            raise PacsError(f"DICOM node {where}: no answer to the C-STORE of {path.name} (connection lost or timed out).")
        if int(code) != 0x0000:
            raise PacsError(f"DICOM node {where}: refused to store {path.name} (status 0x{int(code):04X}).")
        found = _c_find_instance(assoc, ds)
    finally:
        assoc.release()
    if found is False:
        raise PacsError(f"DICOM node {where}: answered success to the C-STORE of {path.name} but does not hold it.")
    log.info("DICOM node %s: stored %s%s", where, path.name, "" if found else " (not verified: no C-FIND)")
    return str(ds.SOPInstanceUID)


def _c_find_instance(assoc, ds) -> bool | None:
    """Whether the node finds the instance (C-FIND, IMAGE level); ``None`` when it offers no C-FIND."""
    # pynetdicom makes its SOP class names with globals() at import: its py.typed module does not show them
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    if not any(c.abstract_syntax == StudyRootQueryRetrieveInformationModelFind for c in assoc.accepted_contexts):
        return None
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = ds.StudyInstanceUID
    query.SeriesInstanceUID = ds.SeriesInstanceUID
    query.SOPInstanceUID = ds.SOPInstanceUID
    found = False
    for count, (status, identifier) in enumerate(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)):
        if count > 10 or not status:
            return None                         # no usable answer: cannot tell
        if status.Status in (0xFF00, 0xFF01) and identifier is not None:
            found = found or str(getattr(identifier, "SOPInstanceUID", "")) == str(ds.SOPInstanceUID)
        elif status.Status != 0x0000:
            return None                         # the node refused the query (e.g. unknown caller)
    return found
