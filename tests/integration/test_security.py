"""Transport security against the real server: gRPC over TLS (server and mutual), HTTPS through a
TLS-terminating proxy, and auth headers on a server whose APIs are restricted."""
from __future__ import annotations

import select
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import clara_napari as cn
from clara_napari.cli import main
from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.errors import ServerError
from clara_napari.core.triton.embedded import SERVE_RESTRICTED, EmbeddedServer

from helpers import brain_app, t1_crop

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[2]
MODELS = DATA_ROOT / "sample_data" / "models"
CATEGORIES = "health,metadata,inference,shared-memory,model-config,model-repository,statistics"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all made here."""
    folder = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=clara-napari test CA", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={'localhost' if name == 'server' else 'clara-napari client'}", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", *ext, cwd=folder)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem",
            "-days", "2", "-subj", "/CN=someone else", cwd=folder)
    return folder


@pytest.fixture(scope="module")
def volume():
    return t1_crop(slice(40, 136), slice(60, 156), slice(40, 136))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return brain_app(tmp_path_factory.mktemp("app96"), roi_size=[96, 96, 96])


@pytest.fixture(scope="module")
def reference(volume, app):
    return cn.run_app(volume, app, server="local").labels.array


def test_grpc_tls(certs, volume, app, reference):
    tls = {"cert": str(certs / "server.pem"), "key": str(certs / "server.key")}
    with EmbeddedServer(MODELS, grpc_tls=tls) as server:
        url = f"grpcs://localhost:{server.ports['grpc']}"
        result = cn.run_app(volume, app, server=url, ssl_ca=str(certs / "ca.pem"))
        assert "grpcs://" in result.backend
        assert np.array_equal(result.labels.array, reference)
        with pytest.raises(ServerError, match=f"localhost:{server.ports['grpc']}"):   # plain gRPC to a TLS port
            cn.run_app(volume, app, server=f"grpc://localhost:{server.ports['grpc']}", ready_timeout_s=2)
        with pytest.raises(ServerError):   # a CA that did not sign the server's certificate
            cn.run_app(volume, app, server=url, ssl_ca=str(certs / "other.pem"), ready_timeout_s=2)


def test_grpc_mutual_tls(certs, volume, app, reference):
    tls = {"cert": str(certs / "server.pem"), "key": str(certs / "server.key"), "root": str(certs / "ca.pem")}
    with EmbeddedServer(MODELS, grpc_tls=tls) as server:
        url = f"grpcs://localhost:{server.ports['grpc']}"
        with pytest.raises(ServerError):   # no client certificate
            cn.run_app(volume, app, server=url, ssl_ca=str(certs / "ca.pem"), ready_timeout_s=2)
        result = cn.run_app(volume, app, server=url, ssl_ca=str(certs / "ca.pem"),
                            ssl_cert=str(certs / "client.pem"), ssl_key=str(certs / "client.key"))
        assert np.array_equal(result.labels.array, reference)


class TlsProxy:
    """Terminates TLS on a loopback port and relays bytes to Triton's plain HTTP port."""

    def __init__(self, target_port: int, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(str(client_ca))
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                raw, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._relay, args=(raw,), daemon=True).start()

    def _relay(self, raw: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target))
        try:
            while not self.stopped.is_set():
                ready, _, _ = select.select([tls, upstream], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(1 << 20)
                    if not data:
                        return
                    (upstream if sock is tls else tls).sendall(data)
                    while sock is tls and tls.pending():
                        upstream.sendall(tls.recv(tls.pending()))
        except (OSError, ssl.SSLError):
            return
        finally:
            tls.close()
            upstream.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(2)


@pytest.fixture(scope="module")
def plain_server():
    # reached through a proxy (another address): restricted like `serve`, so clients may infer
    with EmbeddedServer(MODELS, restricted=SERVE_RESTRICTED) as server:
        yield server


def test_https_with_ca_and_client_certificate(certs, plain_server, volume, app, reference):
    proxy = TlsProxy(plain_server.ports["http"], certs / "server.pem", certs / "server.key", client_ca=certs / "ca.pem")
    try:
        url = f"https://localhost:{proxy.port}"
        result = cn.run_app(volume, app, server=url, ssl_ca=str(certs / "ca.pem"), ssl_cert=str(certs / "client.pem"),
                            ssl_key=str(certs / "client.key"))
        assert np.array_equal(result.labels.array, reference)
        with pytest.raises(ServerError, match=f"localhost:{proxy.port}"):   # no client certificate
            cn.run_app(volume, app, server=url, ssl_ca=str(certs / "ca.pem"), ready_timeout_s=2)
        with pytest.raises(ServerError, match="does not exist"):
            cn.run_app(volume, app, server=url, ssl_ca=str(certs / "missing.pem"))
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def restricted_server():
    extra = [f"--http-restricted-api={CATEGORIES}:clara-key=secret",
             f"--grpc-restricted-protocol={CATEGORIES}:clara-key=secret"]
    with EmbeddedServer(MODELS, extra_args=extra, headers={"clara-key": "secret"}) as server:
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_auth_header(restricted_server, volume, app, reference, protocol):
    url = f"{protocol}://127.0.0.1:{restricted_server.ports[protocol]}"
    with pytest.raises(ServerError, match="127.0.0.1.*refused the request.*--header"):
        cn.run_app(volume, app, server=url, ready_timeout_s=30)   # refused at once, not after 30 s
    # Triton expects gRPC metadata keys with its protocol prefix
    key = "clara-key" if protocol == "http" else "triton-grpc-protocol-clara-key"
    result = cn.run_app(volume, app, server=url, headers={key: "secret"})
    assert result.backend.endswith("+shm)")  # shared memory registration carried the header too
    assert np.array_equal(result.labels.array, reference)


def test_auth_header_from_cli_and_environment(restricted_server, volume, app, reference, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cn.write_volume(volume, inputs / "t1.nii.gz")
    args = ["run", "--app", str(app.folder), "--server", f"127.0.0.1:{restricted_server.ports['http']}", "--input",
            str(inputs), "--no-publish", "--logs", str(tmp_path / "logs"), "--ready-timeout", "2"]
    assert main(args + ["--output", str(tmp_path / "a"), "--header", "clara-key=secret"]) == 0
    assert np.array_equal(cn.read_volume(tmp_path / "a" / "t1.mhd").array, reference)
    monkeypatch.setenv("CLARA_NAPARI_HEADERS", "clara-key=secret")
    assert main(args + ["--output", str(tmp_path / "b")]) == 0
    monkeypatch.delenv("CLARA_NAPARI_HEADERS")
    assert main(args + ["--output", str(tmp_path / "c")]) == 2
