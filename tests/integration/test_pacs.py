"""A real PACS: Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on loopback.

The fixture starts Orthanc on free ports with a temporary configuration (DICOMweb plugin, HTTP
basic authentication, temporary storage) and stops it afterwards, like the Triton fixture. The
round trip fetches the chest CT series over QIDO-RS/WADO-RS, runs the lung app, writes the SEG and
stores it back with STOW-RS; the stored SEG is retrieved again and compared. C-STORE goes to the
same Orthanc's DICOM port. A second Orthanc with a Lua filter refusing SEGs gives a real rejected
store; a loopback relay that cuts WADO-RS answers short gives a real partial retrieve.
"""
from __future__ import annotations

import base64
import http.server
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_security import TlsProxy, certs  # noqa: F401  (the CA, server and client certificates fixture)

from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.errors import PacsError
from clara_napari.core.triton.locations import free_port
from clara_napari.core.volume import read_volume

from helpers.dicom_series import write_ct_series

requests = pytest.importorskip("requests")
pytest.importorskip("dicomweb_client")
pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parents[2]
CT = DATA_ROOT / "sample_data" / "chest_ct" / "chest_ct_lung2.nii.gz"
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
USER, PASSWORD = "clara", "pacs-s3cret-token"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        for candidate in sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []:
            return candidate
    return None


class Orthanc:
    """One Orthanc process on loopback ports with its own storage under ``folder``."""

    def __init__(self, folder: Path, *, lua: str | None = None) -> None:
        binary = shutil.which("Orthanc")
        plugin = dicomweb_plugin()
        if binary is None or plugin is None:
            pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {
            "Name": "clara-napari-tests", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(plugin)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomCheckCalledAet": False,
            # Orthanc 1.10 cannot bind to loopback only: its DICOM port accepts only our AE title from 127.0.0.1
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowFind": False,
            "DicomCheckModalityHost": True, "DicomModalities": {"clara": ["CLARA_NAPARI", "127.0.0.1", 104]}, "HttpThreadsCount": 4, "ConcurrentJobs": 1, "StorageCompression": False,
        }
        if lua is not None:
            (folder / "filter.lua").write_text(lua)
            config["LuaScripts"] = [str(folder / "filter.lua")]
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.out", "wb")  # noqa: SIM115  (open while Orthanc runs; closed in stop)
        self.process = subprocess.Popen([binary, f"--logdir={folder}", str(folder / "orthanc.json")],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.url = f"{self.base}/dicom-web"
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {folder / 'orthanc.out'}")
            try:
                if requests.get(f"{self.base}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Orthanc did not answer within 60 s")
            time.sleep(0.2)

    def upload(self, folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            answer = requests.post(f"{self.base}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30)
            answer.raise_for_status()

    def instances(self, study: str, modality: str | None = None) -> list[str]:
        """Orthanc ids of the study's instances (of one modality), through Orthanc's own REST API."""
        query = {"StudyInstanceUID": study}
        if modality:
            query["Modality"] = modality
        answer = requests.post(f"{self.base}/tools/find", json={"Level": "Instance", "Query": query},
                               auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def file(self, orthanc_id: str) -> bytes:
        answer = requests.get(f"{self.base}/instances/{orthanc_id}/file", auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()
        return answer.content

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ct_study(orthanc, tmp_path_factory) -> dict[str, str]:
    """The chest CT as a CT series, stored in the PACS (through Orthanc's REST API, not our code)."""
    folder = tmp_path_factory.mktemp("pacs_src") / "chest_ct"
    uids = write_ct_series(read_volume(CT), folder)
    orthanc.upload(folder)
    return {**uids, "folder": str(folder)}


def run_cli(args: list[str]) -> int:
    from clara_napari.cli import main

    return main(["run", "--app", "lung_ct", "--server", "local", "--no-publish", *args])


# -- the round trip -----------------------------------------------------------------------------
@pytest.mark.slow
def test_round_trip_pacs_run_seg_pacs(orthanc, ct_study, tmp_path, capsys, restore_root_logging):
    from clara_napari.core.dicom.seg import read_seg

    out, logs = tmp_path / "out", tmp_path / "logs"
    code = run_cli(["--pacs", orthanc.url, "--study", ct_study["study"], "--dicom-seg", "--send",
                    "--pacs-header", f"Authorization={AUTH}", "--output", str(out), "--logs", str(logs)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    name = ct_study["series"].replace(".", "_")[-48:]
    seg_file, mhd_file = out / f"{name}.seg.dcm", out / f"{name}.mhd"
    assert seg_file.is_file() and mhd_file.is_file()
    assert f"fetched series {ct_study['series']} (61 instances)" in captured.out
    local = pydicom.dcmread(seg_file)
    assert f"sent to {orthanc.url} (SOP Instance UID {local.SOPInstanceUID})" in captured.out
    # credentials never printed nor logged
    text = captured.out + captured.err + "".join(p.read_text() for p in logs.iterdir())
    assert PASSWORD not in text and AUTH.split()[1] not in text
    # the stored SEG, retrieved again from the PACS, is the one written, and equals the MetaImage labels
    (stored_id,) = orthanc.instances(ct_study["study"], "SEG")
    stored_path = tmp_path / "stored.dcm"
    stored_path.write_bytes(orthanc.file(stored_id))
    stored = pydicom.dcmread(stored_path)
    assert stored.SOPInstanceUID == local.SOPInstanceUID
    assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_study["series"]
    assert bytes(stored.PixelData) == bytes(local.PixelData)
    source = read_volume(Path(ct_study["folder"]))
    mhd = read_volume(mhd_file)
    assert mhd.geometry() == source.geometry()
    np.testing.assert_array_equal(read_seg(stored_path, reference=source).labels.array, mhd.array)
    assert np.count_nonzero(mhd.array) > 100000


def test_c_store_to_the_dicom_port(orthanc, ct_study, tmp_path):
    from clara_napari.core.apps import resolve_app
    from clara_napari.core.dicom.pacs import c_store
    from clara_napari.core.dicom.writer import write_app_seg

    source = read_volume(Path(ct_study["folder"]))
    labels = source.with_array((source.array < -500).astype(np.uint8))
    seg = write_app_seg(labels, resolve_app("lung_ct"), tmp_path / "c.seg.dcm")
    with pytest.raises(PacsError, match=f"DICOM node ORTHANC@127.0.0.1:{orthanc.dicom_port}: rejected the association"):
        c_store(f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", seg, calling_aet="INTRUDER", timeout_s=30)
    uid = c_store(f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", seg, timeout_s=30)
    stored = [pydicom.dcmread(__import__("io").BytesIO(orthanc.file(i)), stop_before_pixels=True)
              for i in orthanc.instances(ct_study["study"], "SEG")]
    assert uid in {s.SOPInstanceUID for s in stored}


# -- failures: one sentence each, local outputs kept, nothing half-sent reported as sent ---------
def test_pacs_down(tmp_path, capsys):
    port = free_port()
    code = run_cli(["--pacs", f"http://127.0.0.1:{port}/dicom-web", "--study", "1.2.3.4", "--dicom-seg",
                    "--output", str(tmp_path / "out"), "--logs", str(tmp_path / "logs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"PACS http://127.0.0.1:{port}/dicom-web: cannot connect" in err[0]


def test_series_not_found_and_auth_refused(orthanc, ct_study, tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.DEBUG)      # dicomweb-client, requests and urllib3 log at DEBUG: never the credentials
    code = run_cli(["--pacs", orthanc.url, "--study", "1.2.3.4.5", "--pacs-header", f"Authorization={AUTH}",
                    "--dicom-seg", "--output", str(tmp_path / "out"), "--logs", str(tmp_path / "logs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"clara-napari: PACS {orthanc.url}: no series found in study 1.2.3.4.5."]
    code = run_cli(["--pacs", orthanc.url, "--study", ct_study["study"], "--series", "1.2.3.9", "--dicom-seg",
                    "--pacs-header", f"Authorization={AUTH}", "--output", str(tmp_path / "out"),
                    "--logs", str(tmp_path / "logs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no series 1.2.3.9" in err[0]
    code = run_cli(["--pacs", orthanc.url, "--study", ct_study["study"], "--dicom-seg",
                    "--output", str(tmp_path / "out"), "--logs", str(tmp_path / "logs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "HTTP 401" in err[0]
    code = run_cli(["--pacs", orthanc.url, "--study", "1.2.abc", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a DICOM UID" in err[0]
    assert not (tmp_path / "out").exists()
    assert "GET" in caplog.text or "dicom-web" in caplog.text
    assert PASSWORD not in caplog.text and AUTH.split()[1] not in caplog.text


class CuttingRelay:
    """A loopback HTTP relay to a real PACS that drops every WADO-RS part after the first."""

    def __init__(self, target: str) -> None:
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                upstream = requests.get(target + self.path, headers={k: v for k, v in self.headers.items()
                                                                      if k.lower() != "host"}, timeout=30)
                body = upstream.content
                kind = upstream.headers.get("Content-Type", "")
                if "multipart" in kind and "boundary=" in kind:
                    boundary = kind.split("boundary=")[1].split(";")[0].strip('"').encode()
                    parts = body.split(b"--" + boundary)
                    if len(parts) > 3:
                        relay.cut += 1
                        body = b"--" + boundary + parts[1] + b"--" + boundary + b"--\r\n"
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.cut = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_partial_retrieve_is_refused(orthanc, ct_study, tmp_path):
    from clara_napari.core.dicom.pacs import Pacs

    relay = CuttingRelay(orthanc.base)
    try:
        pacs = Pacs(relay.url + "/dicom-web", headers={"Authorization": AUTH}, timeout_s=30)
        with pytest.raises(PacsError, match=r"retrieved 1 of the 61 instances .* the retrieve is incomplete"):
            pacs.fetch_series(ct_study["study"], None, tmp_path)
        assert relay.cut >= 1
    finally:
        relay.close()


@pytest.fixture(scope="module")
def refusing_orthanc(tmp_path_factory):
    """A second real Orthanc whose Lua filter refuses every SEG (a PACS that rejects the store)."""
    lua = "function ReceivedInstanceFilter(dicom, origin, info)\n  return dicom.Modality ~= 'SEG'\nend\n"
    server = Orthanc(tmp_path_factory.mktemp("orthanc_refusing"), lua=lua)
    yield server
    server.stop()


def test_rejected_store_keeps_local_outputs(refusing_orthanc, tmp_path, capsys, restore_root_logging):
    """The small chest crop from the refusing PACS: the SEG is written, both stores fail, exit code 1."""
    volume = read_volume(CT)
    crop = volume.with_array(np.ascontiguousarray(volume.array[20:30, 96:416, 32:480]))
    crop.origin = tuple(np.asarray(volume.origin) + np.asarray(volume.spacing) * [32, 96, 20])
    folder = tmp_path / "src" / "crop"
    uids = write_ct_series(crop, folder)
    refusing_orthanc.upload(folder)
    out = tmp_path / "out"
    code = run_cli(["--pacs", refusing_orthanc.url, "--study", uids["study"], "--dicom-seg", "--send",
                    "--send-dicom", f"ORTHANC@127.0.0.1:{refusing_orthanc.dicom_port}",
                    "--pacs-header", f"Authorization={AUTH}", "--output", str(out), "--logs", str(tmp_path / "logs")])
    captured = capsys.readouterr()
    assert code == 1
    failed = [ln for ln in captured.err.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 2, captured.out + captured.err
    assert "sent to" not in captured.out
    # Orthanc 1.10 answers success to both stores its filter dropped; the checks after the store catch it
    assert any(f"PACS {refusing_orthanc.url}: confirmed storing" in ln and "but does not list it" in ln for ln in failed)
    assert any(f"DICOM node ORTHANC@127.0.0.1:{refusing_orthanc.dicom_port}: answered success to the C-STORE" in ln
               and "but does not hold it" in ln for ln in failed)
    segs = list(out.glob("*.seg.dcm"))
    assert len(segs) == 1 and all(f"(kept {segs[0]})" in ln for ln in failed)
    assert refusing_orthanc.instances(uids["study"], "SEG") == []


def test_https_pacs_with_ca_and_client_certificate(orthanc, ct_study, certs, tmp_path):  # noqa: F811
    """TLS to the PACS (a loopback TLS relay in front of Orthanc): --pacs-ssl-ca/-cert/-key."""
    from clara_napari.core.dicom.pacs import Pacs

    proxy = TlsProxy(orthanc.http_port, certs / "server.pem", certs / "server.key", client_ca=certs / "ca.pem")
    try:
        url = f"https://localhost:{proxy.port}/dicom-web"
        pacs = Pacs(url, headers={"Authorization": AUTH}, ssl_ca=str(certs / "ca.pem"),
                    ssl_cert=str(certs / "client.pem"), ssl_key=str(certs / "client.key"))
        assert pacs.find_series(ct_study["study"]) == (ct_study["series"], 61)
        with pytest.raises(PacsError, match=f"PACS {url}: (TLS failed|cannot connect)"):   # no client certificate
            Pacs(url, headers={"Authorization": AUTH}, ssl_ca=str(certs / "ca.pem"), timeout_s=5).find_series(ct_study["study"])
        with pytest.raises(PacsError, match=f"PACS {url}: TLS failed"):                     # a CA that did not sign it
            Pacs(url, headers={"Authorization": AUTH}, ssl_ca=str(certs / "other.pem"), ssl_cert=str(certs / "client.pem"),
                 ssl_key=str(certs / "client.key"), timeout_s=5).find_series(ct_study["study"])
        with pytest.raises(PacsError, match="does not exist"):
            Pacs(url, ssl_ca=str(tmp_path / "missing.pem"))
    finally:
        proxy.close()
