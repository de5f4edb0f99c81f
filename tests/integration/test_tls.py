"""DICOM over TLS against the real server process: pynetdicom and DCMTK as peers, protocol
versions and cipher suites, mutual TLS, the certificate-to-AE map and the handshake timeout.

A CA, a server certificate (SAN 127.0.0.1 and localhost) and client certificates are made
with `cryptography` in a temporary folder.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE

from store_scp.dicom import pdu as P
from tests.serverproc import DCMTK, ServerProcess, free_port, start_server

from .rawclient import PeerClosed, RawClient, associate_rq

HOST = "127.0.0.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
StartServer = Callable[..., ServerProcess]
HANDSHAKE_TIMEOUT = 3.0  # STORE_SCP_TLS_HANDSHAKE_TIMEOUT of every TLS server here


# --------------------------------------------------------------------------------------------
# a small PKI


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    ca: Path
    server: Identity
    client_a: Identity
    client_b: Identity
    rogue: Identity  # signed by a CA the server does not trust


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "store-scp tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(key: Any, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    folder: Path,
    *,
    server: bool,
) -> Identity:
    # The server gets an RSA key so that RSA key-exchange suites are possible in principle
    # (the profile, not the key type, must be what refuses them).
    key: Any = (
        rsa.generate_private_key(65537, 2048) if server else ec.generate_private_key(ec.SECP256R1())
    )
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    identity = Identity(folder / f"{cn}.crt", folder / f"{cn}.key")
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, identity.key)
    return identity


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _make_ca("store-scp test CA")
    ca = folder / "ca.crt"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    rogue_key, rogue_cert = _make_ca("some other CA")
    return PKI(
        ca=ca,
        server=_issue(ca_key, ca_cert, "store-scp-server", folder, server=True),
        client_a=_issue(ca_key, ca_cert, "client-a", folder, server=False),
        client_b=_issue(ca_key, ca_cert, "client-b", folder, server=False),
        rogue=_issue(rogue_key, rogue_cert, "client-a-rogue", folder, server=False),
    )


# --------------------------------------------------------------------------------------------
# servers and clients


@pytest.fixture(scope="module")
def module_servers() -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
def tls_server_for(
    pki: PKI, module_servers: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> StartServer:
    """A TLS server (plain port too) per configuration, shared within the module."""

    def start(kind: str = "tls", **extra: str) -> ServerProcess:
        running = module_servers.get(kind)
        if running is not None and running.proc.poll() is None:
            return running
        env = {
            "STORE_SCP_TLS_CERT": str(pki.server.cert),
            "STORE_SCP_TLS_KEY": str(pki.server.key),
            "STORE_SCP_TLS_PORT": str(free_port()),
            "STORE_SCP_TLS_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
            **{f"STORE_SCP_{name.upper()}": value for name, value in extra.items()},
        }
        server = start_server(tmp_path_factory.mktemp(kind) / "srv", env=env)
        module_servers[kind] = server
        return server

    return start


@pytest.fixture
def tls_server(tls_server_for: StartServer) -> ServerProcess:
    return tls_server_for("tls")


@pytest.fixture
def mtls_server(tls_server_for: StartServer, pki: PKI) -> ServerProcess:
    return tls_server_for("mtls", tls_ca=str(pki.ca))


@pytest.fixture
def cert_map_server(tls_server_for: StartServer, pki: PKI) -> ServerProcess:
    return tls_server_for(
        "cert-map", tls_ca=str(pki.ca), tls_cert_ae_map=json.dumps({"client-a": ["SCU_A"]})
    )


def client_context(pki: PKI, identity: Identity | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if identity is not None:
        ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx


def records(server: ServerProcess) -> list[dict[str, Any]]:
    out = []
    for line in server.log().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def assert_no_errors(server: ServerProcess) -> None:
    bad = [r for r in records(server) if r.get("level") in ("ERROR", "CRITICAL") or "exc" in r]
    assert not bad, bad


def ct_small() -> Path:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return Path(str(path))


def pynetdicom_ae(calling_ae: str = "PYNET_SCU") -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_LE)
    return ae


def pynetdicom_echo(
    server: ServerProcess, ctx: ssl.SSLContext, *, calling_ae: str = "PYNET_SCU"
) -> int | None:
    """C-ECHO over TLS; the status, or None if no association was established."""
    ae = pynetdicom_ae(calling_ae)
    assoc = ae.associate(
        HOST, server.ports["tls"], ae_title="STORE_SCP", tls_args=(ctx, "localhost")
    )
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(DCMTK / tool), "-to", "5", "-ta", "5", "-td", "5", "-aec", "STORE_SCP", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def raw_tls(
    server: ServerProcess, ctx: ssl.SSLContext, *, server_hostname: str | None = "localhost"
) -> RawClient:
    return RawClient.connect(HOST, server.ports["tls"], tls=ctx, server_hostname=server_hostname)


def associate_over_tls(
    server: ServerProcess, ctx: ssl.SSLContext, calling_ae: str
) -> P.AssociateAC | P.AssociateRJ | None:
    """A-ASSOCIATE-RQ over TLS: the server's answer, or None if the TLS layer refused us (at
    the handshake or, with TLS 1.3, on the first read after it)."""
    try:
        client = raw_tls(server, ctx)
    except (ssl.SSLError, OSError):
        return None
    with client:
        try:
            answer = client.associate(calling_ae=calling_ae)
        except (ssl.SSLError, PeerClosed, ConnectionError):
            return None
        if isinstance(answer, P.AssociateAC):
            client.release()
        return answer


def handshake(server: ServerProcess, ctx: ssl.SSLContext) -> str:
    """Do a TLS handshake only; return the negotiated protocol version (raises on failure)."""
    sock = socket.create_connection((HOST, server.ports["tls"]), timeout=5)
    with sock, ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        version = tls.version()
        assert version is not None
        return version


# --------------------------------------------------------------------------------------------
# interoperability


def test_pynetdicom_echo_and_store_over_tls(tls_server: ServerProcess, pki: PKI) -> None:
    assert set(tls_server.ports) >= {"plain", "tls"}
    ctx = client_context(pki)
    assert pynetdicom_echo(tls_server, ctx) == 0
    before = set(tls_server.stored_files())
    ds = dcmread(ct_small())
    ae = pynetdicom_ae()
    assoc = ae.associate(
        HOST, tls_server.ports["tls"], ae_title="STORE_SCP", tls_args=(ctx, "localhost")
    )
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    new = set(tls_server.stored_files()) - before
    assert len(new) == 1
    stored = dcmread(new.pop())
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    accepted = [r for r in records(tls_server) if r["msg"] == "association accepted"]
    assert any(r["tls"] is True and r["calling_ae"] == "PYNET_SCU" for r in accepted)
    # The plain port runs alongside.
    result = dcmtk("echoscu", HOST, str(tls_server.port))
    assert result.returncode == 0, result.stderr
    assert_no_errors(tls_server)


def _dcmtk_has_tls() -> bool:
    result = subprocess.run(
        [str(DCMTK / "echoscu"), "--help"], capture_output=True, text=True, check=False
    )
    return "+tls" in result.stdout


needs_dcmtk_tls = pytest.mark.skipif(
    not _dcmtk_has_tls(), reason="this DCMTK build has no TLS support"
)


@needs_dcmtk_tls
def test_dcmtk_echo_and_store_over_tls(tls_server: ServerProcess, pki: PKI) -> None:
    port = str(tls_server.ports["tls"])
    tls_args = ["+tls", str(pki.client_a.key), str(pki.client_a.cert), "+cf", str(pki.ca)]
    result = dcmtk("echoscu", *tls_args, HOST, port)
    assert result.returncode == 0, result.stdout + result.stderr
    result = dcmtk("echoscu", "+tla", "+cf", str(pki.ca), HOST, port)  # no client certificate
    assert result.returncode == 0, result.stdout + result.stderr
    before = set(tls_server.stored_files())
    result = dcmtk("storescu", *tls_args, HOST, port, str(ct_small()))
    assert result.returncode == 0, result.stdout + result.stderr
    new = set(tls_server.stored_files()) - before
    assert len(new) == 1
    assert dcmread(new.pop()).PixelData == dcmread(ct_small()).PixelData
    assert_no_errors(tls_server)


# --------------------------------------------------------------------------------------------
# protocol versions and cipher suites


def _legacy_client(maximum: str) -> ssl.SSLContext:
    """A client that would speak old TLS versions (security level 0 lets OpenSSL try), up to
    `maximum` (a TLSVersion name)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # Python deprecates TLS 1.0/1.1: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion[maximum]
    return ctx


@pytest.mark.parametrize("maximum", ["TLSv1", "TLSv1_1"])
def test_tls_1_1_and_below_refused(tls_server: ServerProcess, maximum: str) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(tls_server, _legacy_client(maximum))
    # The same client is fine as soon as it may use TLS 1.2; TLS 1.3 works too.
    assert handshake(tls_server, _legacy_client("TLSv1_2")) == "TLSv1.2"
    assert handshake(tls_server, _legacy_client("TLSv1_3")) == "TLSv1.3"
    assert_no_errors(tls_server)


def _tls12_with(cipher: str) -> ssl.SSLContext:
    ctx = _legacy_client("TLSv1_2")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    return ctx


@pytest.mark.parametrize("profile", ["non-downgrading", "bcp195"])
def test_non_aead_suites_refused(tls_server_for: StartServer, profile: str) -> None:
    server = tls_server_for(f"profile-{profile}", tls_profile=profile)
    with pytest.raises(ssl.SSLError):
        handshake(server, _tls12_with("AES128-SHA256"))  # RSA key exchange, CBC: never
    with pytest.raises(ssl.SSLError):
        handshake(server, _tls12_with("ECDHE-RSA-AES128-SHA256"))  # forward secret, not AEAD
    assert handshake(server, _tls12_with("ECDHE-RSA-AES128-GCM-SHA256")) == "TLSv1.2"
    assert handshake(server, _tls12_with("ECDHE-RSA-AES256-GCM-SHA384")) == "TLSv1.2"
    assert_no_errors(server)


def test_non_downgrading_profile_refuses_dhe(tls_server_for: StartServer) -> None:
    server = tls_server_for("profile-non-downgrading", tls_profile="non-downgrading")
    with pytest.raises(ssl.SSLError):
        handshake(server, _tls12_with("DHE-RSA-AES128-GCM-SHA256"))


# --------------------------------------------------------------------------------------------
# mutual TLS and the certificate -> AE map


def test_mutual_tls(mtls_server: ServerProcess, pki: PKI) -> None:
    # No client certificate: refused by the TLS layer, never an A-ASSOCIATE-AC.
    assert associate_over_tls(mtls_server, client_context(pki), "SCU_A") is None
    assert pynetdicom_echo(mtls_server, client_context(pki)) is None
    # A certificate from a CA the server does not trust: refused too.
    assert associate_over_tls(mtls_server, client_context(pki, pki.rogue), "SCU_A") is None
    # A valid client certificate works, with any calling AE (no map configured).
    assert pynetdicom_echo(mtls_server, client_context(pki, pki.client_a)) == 0
    answer = associate_over_tls(mtls_server, client_context(pki, pki.client_b), "ANY_AE")
    assert isinstance(answer, P.AssociateAC)
    if _dcmtk_has_tls():
        port = str(mtls_server.ports["tls"])
        tls_args = ["+tls", str(pki.client_a.key), str(pki.client_a.cert), "+cf", str(pki.ca)]
        result = dcmtk("echoscu", *tls_args, HOST, port)
        assert result.returncode == 0, result.stdout + result.stderr
        result = dcmtk("echoscu", "+tla", "+cf", str(pki.ca), HOST, port)
        assert result.returncode != 0
    assert_no_errors(mtls_server)


def test_cert_ae_map_allows_the_mapped_ae(cert_map_server: ServerProcess, pki: PKI) -> None:
    ctx = client_context(pki, pki.client_a)
    answer = associate_over_tls(cert_map_server, ctx, "SCU_A")
    assert isinstance(answer, P.AssociateAC), answer
    assert pynetdicom_echo(cert_map_server, ctx, calling_ae="SCU_A") == 0
    assert_no_errors(cert_map_server)


@pytest.mark.parametrize(
    ("identity", "calling_ae"),
    [("client_a", "SCU_B"), ("client_b", "SCU_A")],
    ids=["mapped-cert-other-ae", "unmapped-cert-borrowing-ae"],
)
def test_cert_ae_map_rejects_other_ae(
    cert_map_server: ServerProcess, pki: PKI, identity: str, calling_ae: str
) -> None:
    ctx = client_context(pki, getattr(pki, identity))
    answer = associate_over_tls(cert_map_server, ctx, calling_ae)
    assert isinstance(answer, P.AssociateRJ), answer
    assert (answer.result, answer.source, answer.reason) == (1, 1, 3)
    rejected = [
        r
        for r in records(cert_map_server)
        if r["msg"] == "association rejected" and r.get("calling_ae") == calling_ae
    ]
    assert rejected and rejected[-1].get("why")
    assert_no_errors(cert_map_server)


# --------------------------------------------------------------------------------------------
# the handshake must not block anyone


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return True  # nothing to read, not closed
    except OSError:
        return False
    finally:
        sock.settimeout(10)


def test_slow_handshake_does_not_block_others(tls_server: ServerProcess, pki: PKI) -> None:
    timeout = HANDSHAKE_TIMEOUT
    port = tls_server.ports["tls"]
    silent = socket.create_connection((HOST, port), timeout=10)
    partial = socket.create_connection((HOST, port), timeout=10)
    partial.sendall(b"\x16\x03\x01\x02\x00")  # a TLS record header, then nothing
    t0 = time.monotonic()
    try:
        # Meanwhile a real client completes a TLS C-ECHO, while both handshakes still hang.
        assert pynetdicom_echo(tls_server, client_context(pki, pki.client_a)) == 0
        assert time.monotonic() - t0 < timeout
        assert _still_open(silent) and _still_open(partial)
        # Then the stalled handshakes are closed after the handshake timeout.
        for sock in (silent, partial):
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""
        elapsed = time.monotonic() - t0
        assert timeout - 0.3 <= elapsed <= timeout + 3, elapsed
    finally:
        silent.close()
        partial.close()
    assert pynetdicom_echo(tls_server, client_context(pki)) == 0
    assert_no_errors(tls_server)


def test_plain_dicom_on_the_tls_port_is_refused(tls_server: ServerProcess) -> None:
    with socket.create_connection((HOST, tls_server.ports["tls"]), timeout=5) as sock:
        sock.sendall(P.encode(associate_rq()))
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += chunk
    assert not received.startswith(bytes([P.A_ASSOCIATE_AC])), received  # at most a TLS alert
    assert_no_errors(tls_server)
