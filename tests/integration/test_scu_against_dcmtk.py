"""`store-scp echo` / `send` and the `Requestor` against real peers: DCMTK's storescp in
bit-preserving mode (`+B`) and pynetdicom as an independent SCP.

The check that matters: the data set a peer received is byte for byte the data set that
follows the file meta in the source file, in the file's own transfer syntax. Test data are the
files bundled with pydicom and pydicom-data (never downloaded) and files generated here.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner, Result
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, generate_uid

from store_scp import scu
from store_scp.cli_scu import echo_command, parse_address, send_command
from store_scp.dicom import uids

STORESCP = "/usr/bin/storescp"  # DCMTK's; pynetdicom installs a `storescp` that shadows it
LOCALHOST = "127.0.0.1"

# (bundled file, its transfer syntax): one or more per family of syntaxes.
SYNTAX_FILES = [
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),  # Implicit VR Little Endian
    ("CT_small.dcm", "1.2.840.10008.1.2.1"),  # Explicit VR Little Endian
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),  # Explicit VR Big Endian (retired)
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),  # Deflated, odd length in the file
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline
    ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG extended
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless SV1
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70"),  # pydicom-data, 215 KB
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_08.dcm", "1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000
    ("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5"),  # RLE lossless
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
    ("examples_overlay.dcm", "1.2.840.10008.1.2.1"),  # 321 KB: many PDUs
]


def bundled(name: str) -> Path | None:
    """A file bundled with pydicom or pydicom-data; None if absent (never downloaded)."""
    found = get_testdata_file(name, download=False)
    return Path(found) if isinstance(found, str) else None


def syntax_files() -> list[Path]:
    paths = []
    for name, syntax in SYNTAX_FILES:
        path = bundled(name)
        if path is None:
            continue
        assert str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == (
            syntax
        ), name
        paths.append(path)
    return paths


def split_part10(path: Path) -> tuple[str, str, bytes]:
    """(SOP Instance UID, transfer syntax, data set bytes) of a Part 10 file, by pydicom."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        return str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID), fp.read()


def expected_wire_bytes(path: Path) -> tuple[str, str, bytes]:
    """What the sender must put on the wire for a file: its data set as is, plus the trailing
    NUL that PS3.5 A.5 requires of an odd-length deflated data set."""
    uid, syntax, data = split_part10(path)
    if syntax == uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and len(data) % 2:
        data += b"\x00"
    return uid, syntax, data


def free_port(host: str = LOCALHOST) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run(command: Any, args: list[str]) -> Result:
    return CliRunner().invoke(command, args, catch_exceptions=False)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# DCMTK storescp


@dataclass
class Dcmtk:
    port: int
    out: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return address(LOCALHOST, self.port)

    def stored(self) -> dict[str, Path]:
        """SOP Instance UID -> file DCMTK wrote."""
        result = {}
        for path in self.out.iterdir():
            uid, _, _ = split_part10(path)
            result[uid] = path
        return result


def start_storescp(tmp_path: Path, *extra: str) -> Iterator[Dcmtk]:
    if not os.access(STORESCP, os.X_OK):
        pytest.skip(f"DCMTK is not installed ({STORESCP}); apt-get install -y dcmtk")
    out = tmp_path / "dcmtk-out"
    out.mkdir()
    log = tmp_path / "storescp.log"
    port = free_port()
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [STORESCP, "+B", "+xa", "-aet", "STORE_SCP", "-od", str(out), *extra, str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    peer = Dcmtk(port, out, log, process)
    try:
        wait_ready(LOCALHOST, port, process)
        yield peer
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(host: str, port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 10
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the SCP exited with {process.returncode}")
        try:
            with scu.Requestor() as requestor:
                requestor.connect(
                    host,
                    port,
                    "PROBE",
                    "STORE_SCP",
                    [(uids.VERIFICATION_SOP_CLASS, [uids.IMPLICIT_VR_LITTLE_ENDIAN])],
                    timeout=2,
                )
            return
        except scu.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except scu.SCUError:
            return  # it answers (a rejection, for an SCP told to refuse): it is listening


@pytest.fixture
def dcmtk(tmp_path: Path) -> Iterator[Dcmtk]:
    yield from start_storescp(tmp_path)


def assert_identical(peer_files: dict[str, Path], sources: list[Path]) -> None:
    for source in sources:
        uid, syntax, data = expected_wire_bytes(source)
        assert uid in peer_files, f"{source.name} was not stored"
        _, stored_syntax, stored = split_part10(peer_files[uid])
        assert stored_syntax == syntax, source.name
        assert stored == data, f"{source.name}: stored data set differs from the file's"


# --- DCMTK tests -----------------------------------------------------------------------------


def test_echo_against_dcmtk(dcmtk: Dcmtk) -> None:
    result = run(echo_command, [dcmtk.address])
    assert result.exit_code == 0, result.output
    assert "Success (0x0000)" in result.output
    assert "round trip" in result.output


def unique_batches(sources: list[Path]) -> list[list[Path]]:
    """Split files so that no batch holds two with one SOP Instance UID (several bundled files
    are one instance in several syntaxes, and DCMTK names its files by that UID)."""
    batches: list[list[Path]] = []
    for source in sources:
        uid = scu.read_part10(source).sop_instance_uid
        for batch in batches:
            if all(scu.read_part10(p).sop_instance_uid != uid for p in batch):
                batch.append(source)
                break
        else:
            batches.append([source])
    return batches


def test_send_every_syntax_is_bit_identical_with_dcmtk(dcmtk: Dcmtk) -> None:
    sources = syntax_files()
    assert len(sources) >= 12  # the pydicom-bundled ones at least
    for batch in unique_batches(sources):
        for old in dcmtk.out.iterdir():
            old.unlink()
        result = run(send_command, [dcmtk.address, *map(str, batch), "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["sent"] == len(batch)
        assert summary["failed"] == 0
        assert summary["failures"] == []
        assert summary["bytes"] == sum(
            p.stat().st_size - scu.read_part10(p).dataset_offset for p in batch
        )
        assert_identical(dcmtk.stored(), batch)


def test_send_recursive_counts_skipped_and_one_association(tmp_path: Path, dcmtk: Dcmtk) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    sources = []
    for i, name in enumerate(["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm"]):
        path = bundled(name)
        assert path is not None
        target = tree / ("a" if i else "a/b") / name
        shutil.copyfile(path, target)
        sources.append(target)
    (tree / "notes.txt").write_text("not DICOM")
    (tree / "a" / "short").write_bytes(b"DICM")
    result = run(send_command, [dcmtk.address, "-r", str(tree), "--aet", "SENDER"])
    assert result.exit_code == 0, result.output
    assert "sent 3, failed 0, skipped 2" in result.output
    assert_identical(dcmtk.stored(), sources)
    # Without -r a directory is skipped, and nothing to send is an error.
    result = run(send_command, [dcmtk.address, str(tree)])
    assert result.exit_code == 1
    assert "use --recursive" in result.output


def test_small_pdu_many_fragments(tmp_path: Path) -> None:
    """DCMTK's smallest maximum PDU: hundreds of P-DATA PDUs for one object."""
    for peer in start_storescp(tmp_path, "-pdu", "4096"):
        big = [p for p in map(bundled, ["examples_overlay.dcm", "waveform_ecg.dcm"]) if p]
        result = run(send_command, [peer.address, *map(str, big), "--max-pdu", "8192"])
        assert result.exit_code == 0, result.output
        assert_identical(peer.stored(), big)


def test_requestor_streams_bytes_files_and_chunks(dcmtk: Dcmtk) -> None:
    ct, mr, dfl = (bundled(n) for n in ("CT_small.dcm", "MR_small.dcm", "image_dfl.dcm"))
    assert ct and mr and dfl
    infos = {p: scu.read_part10(p) for p in (ct, mr, dfl)}
    contexts = [(i.sop_class_uid, [i.transfer_syntax_uid]) for i in infos.values()]
    with scu.Requestor() as requestor:
        requestor.connect(LOCALHOST, dcmtk.port, "STORE_SCU", "STORE_SCP", contexts)
        assert requestor._sock is not None
        assert requestor._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert requestor.peer_max_pdu == 16384  # DCMTK's default
        # bytes
        info = infos[ct]
        data = ct.read_bytes()[info.dataset_offset :]
        result = requestor.store(info.sop_class_uid, info.sop_instance_uid, info[2], data)
        assert result == (0, "") and result.ok
        # a file positioned at the data set
        info = infos[mr]
        with open(mr, "rb") as fp:
            fp.seek(info.dataset_offset)
            assert requestor.store(info[0], info[1], info[2], fp).ok
        # an iterable of odd-sized chunks (odd deflated data set: padded)
        info = infos[dfl]
        raw = dfl.read_bytes()[info.dataset_offset :]
        chunks = (raw[i : i + 777] for i in range(0, len(raw), 777))
        assert requestor.store(info[0], info[1], info[2], chunks).ok
    assert_identical(dcmtk.stored(), [ct, mr, dfl])


def test_store_without_matching_context_is_a_local_failure(dcmtk: Dcmtk) -> None:
    ct = bundled("CT_small.dcm")
    assert ct is not None
    info = scu.read_part10(ct)
    with scu.Requestor() as requestor:
        requestor.connect(
            LOCALHOST,
            dcmtk.port,
            "STORE_SCU",
            "STORE_SCP",
            [
                (info.sop_class_uid, [uids.IMPLICIT_VR_LITTLE_ENDIAN]),
                (uids.VERIFICATION_SOP_CLASS, [uids.IMPLICIT_VR_LITTLE_ENDIAN]),
            ],
        )
        result = requestor.store(info[0], info[1], info.transfer_syntax_uid, b"\x00" * 8)
        assert result.status == scu.LOCAL_FAILURE and not result.ok
        assert "no presentation context" in result.error_comment
        assert info.transfer_syntax_uid in result.error_comment
        other = requestor.store("1.2.3.4", "1.2.3.4.5", uids.IMPLICIT_VR_LITTLE_ENDIAN, b"")
        assert other.status == scu.LOCAL_FAILURE
        assert requestor.echo() == 0  # the association is unharmed
    assert list(dcmtk.out.iterdir()) == []


def test_dcmtk_refusing_the_association(tmp_path: Path) -> None:
    for peer in start_storescp(tmp_path, "--refuse"):
        ct = bundled("CT_small.dcm")
        assert ct is not None
        result = run(send_command, [peer.address, str(ct)])
        assert result.exit_code == 1
        assert "association rejected" in result.output
        assert "failed 1" in result.output
        with pytest.raises(scu.AssociationRejectedError) as info:
            scu.Requestor().connect(
                LOCALHOST,
                peer.port,
                "STORE_SCU",
                "STORE_SCP",
                [(uids.VERIFICATION_SOP_CLASS, [uids.IMPLICIT_VR_LITTLE_ENDIAN])],
            )
        assert info.value.result == 1


def test_dcmtk_aborting_during_the_transfer(tmp_path: Path) -> None:
    """Every object is aborted by the peer: each file fails with the reason, each on its own
    association, and `send` neither hangs nor stops early."""
    for peer in start_storescp(tmp_path, "--abort-during"):
        files = [p for p in map(bundled, ["CT_small.dcm", "MR_small.dcm"]) if p]
        result = run(send_command, [peer.address, *map(str, files), "--json"])
        assert result.exit_code == 1
        summary = json.loads(result.stdout)
        assert summary["sent"] == 0 and summary["failed"] == 2
        for failure in summary["failures"]:
            assert "abort" in failure["error"]


def test_echo_connection_refused() -> None:
    result = run(echo_command, [address(LOCALHOST, free_port()), "--timeout", "2"])
    assert result.exit_code == 1
    assert "cannot connect" in result.output


# ---------------------------------------------------------------------------------------------
# pynetdicom as an independent SCP


@dataclass
class Received:
    sop_instance_uid: str
    transfer_syntax: str
    message_id: int
    data: bytes


@dataclass
class PynetSCP:
    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    associations: list[int] = field(default_factory=list)  # contexts proposed per association
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return address(self.host, self.port)


def start_pynetdicom(
    host: str = LOCALHOST,
    *,
    ae_title: str = "STORE_SCP",
    transfer_syntaxes: list[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[PynetSCP]:
    pynetdicom = pytest.importorskip("pynetdicom")
    from pynetdicom import AE, StoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    syntaxes = transfer_syntaxes or list(pynetdicom.ALL_TRANSFER_SYNTAXES)
    peer = PynetSCP(host, free_port(host))
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    ae.maximum_pdu_size = 16382
    for cx in StoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
    ae.add_supported_context(Verification)

    def on_store(event: Any) -> int:
        with peer.lock:
            peer.received.append(
                Received(
                    str(event.request.AffectedSOPInstanceUID),
                    str(event.context.transfer_syntax),
                    int(event.request.MessageID),
                    event.request.DataSet.getvalue(),
                )
            )
        return 0x0000

    def on_requested(event: Any) -> None:
        with peer.lock:
            peer.associations.append(len(event.assoc.requestor.requested_contexts))

    server = ae.start_server(
        (host, peer.port),
        block=False,
        ssl_context=ssl_context,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_REQUESTED, on_requested)],
    )
    assert server is not None
    try:
        yield peer
    finally:
        server.shutdown()


@pytest.fixture
def pynet() -> Iterator[PynetSCP]:
    yield from start_pynetdicom()


def test_send_to_pynetdicom_is_bit_identical_with_increasing_message_ids(pynet: PynetSCP) -> None:
    sources = syntax_files()
    result = run(send_command, [pynet.address, *map(str, sources)])
    assert result.exit_code == 0, result.output
    assert f"sent {len(sources)}, failed 0" in result.output
    assert len(pynet.received) == len(sources)
    for source, received in zip(sources, pynet.received, strict=True):  # one association, in order
        uid, syntax, data = expected_wire_bytes(source)
        assert (received.sop_instance_uid, received.transfer_syntax) == (uid, syntax)
        assert received.data == data, source.name
    ids = [r.message_id for r in pynet.received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert pynet.associations == [len({(p[0], p[2]) for p in map(scu.read_part10, sources)})]


def test_pynetdicom_rejects_the_called_ae(pynet: PynetSCP) -> None:
    ct = bundled("CT_small.dcm")
    assert ct is not None
    result = run(send_command, [pynet.address, str(ct), "--aec", "WRONG_AE"])
    assert result.exit_code == 1
    assert "association rejected" in result.output
    assert "called AE title not recognized" in result.output
    assert pynet.received == []

    result = run(echo_command, [pynet.address, "--aec", "WRONG_AE"])
    assert result.exit_code == 1
    assert "called AE title not recognized" in result.output

    with pytest.raises(scu.AssociationRejectedError) as info:
        scu.Requestor().connect(
            LOCALHOST,
            pynet.port,
            "STORE_SCU",
            "WRONG_AE",
            [(uids.VERIFICATION_SOP_CLASS, [uids.IMPLICIT_VR_LITTLE_ENDIAN])],
        )
    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)


def test_unsupported_transfer_syntax_fails_that_file_only() -> None:
    for peer in start_pynetdicom(transfer_syntaxes=[uids.EXPLICIT_VR_LITTLE_ENDIAN]):
        ct, jpeg = bundled("CT_small.dcm"), bundled("SC_rgb_jpeg_dcmtk.dcm")
        assert ct and jpeg
        result = run(send_command, [peer.address, str(ct), str(jpeg), "--json"])
        assert result.exit_code == 1
        summary = json.loads(result.stdout)
        assert summary["sent"] == 1 and summary["failed"] == 1
        (failure,) = summary["failures"]
        assert failure["path"] == str(jpeg)
        assert "transfer syntax not supported" in failure["error"]
        assert [r.sop_instance_uid for r in peer.received] == [scu.read_part10(ct)[1]]


def test_more_than_128_pairs_open_more_associations(tmp_path: Path) -> None:
    """65 SOP classes x 2 transfer syntaxes = 130 pairs: 128 contexts on the first
    association, 2 on the second."""
    from pynetdicom import StoragePresentationContexts
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    known = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    classes = [uid for uid in known if uid_to_service_class(uid) is StorageServiceClass][:65]
    assert len(classes) == 65
    files: list[Path] = []
    for sop_class in classes:
        for syntax in (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN):
            path = tmp_path / f"{len(files):03d}.dcm"
            write_small_part10(path, sop_class, generate_uid(), syntax)
            files.append(path)
    for peer in start_pynetdicom():
        result = run(send_command, [peer.address, "-r", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["sent"] == 130
        assert peer.associations == [128, 2]
        assert len(peer.received) == 130
        for path in files:
            uid, syntax, data = split_part10(path)
            (received,) = [r for r in peer.received if r.sop_instance_uid == uid]
            assert (received.transfer_syntax, received.data) == (syntax, data)


def write_small_part10(path: Path, sop_class: str, sop_instance: str, syntax: str) -> None:
    ds = Dataset()
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(sop_instance)
    ds.Modality = "OT"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def test_ipv6_echo_and_send() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        free_port("::1")
    except OSError:
        pytest.skip("::1 is not available")
    for peer in start_pynetdicom("::1"):
        assert parse_address(peer.address) == ("::1", peer.port)
        result = run(echo_command, [peer.address])
        assert result.exit_code == 0, result.output
        assert f"[::1]:{peer.port}" in result.output
        ct = bundled("CT_small.dcm")
        assert ct is not None
        result = run(send_command, [peer.address, str(ct)])
        assert result.exit_code == 0, result.output
        assert len(peer.received) == 1


def test_tls_echo_and_send(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls["server.pem"], tls["server.key"])
    for peer in start_pynetdicom(ssl_context=server):
        result = run(echo_command, [peer.address, "--tls", "--tls-ca", str(tls["ca.pem"])])
        assert result.exit_code == 0, result.output
        assert "TLS" in result.output
        ct = bundled("CT_small.dcm")
        assert ct is not None
        result = run(send_command, [peer.address, str(ct), "--tls-ca", str(tls["ca.pem"])])
        assert result.exit_code == 0, result.output
        assert peer.received[0].data == expected_wire_bytes(ct)[2]
        # Without our CA the server certificate is not trusted: a clear error, exit 1.
        result = run(echo_command, [peer.address, "--tls"])
        assert result.exit_code == 1
        assert "TLS handshake" in result.output
        # Plain TCP to a TLS port: an error, not a hang.
        result = run(echo_command, [peer.address, "--timeout", "5"])
        assert result.exit_code == 1


def test_mutual_tls(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls["ca.pem"])
    server.load_cert_chain(tls["server.pem"], tls["server.key"])
    server.verify_mode = ssl.CERT_REQUIRED
    for peer in start_pynetdicom(ssl_context=server):
        ca = ["--tls-ca", str(tls["ca.pem"])]
        client = ["--tls-cert", str(tls["client.pem"]), "--tls-key", str(tls["client.key"])]
        result = run(echo_command, [peer.address, *ca, *client])
        assert result.exit_code == 0, result.output
        result = run(echo_command, [peer.address, *ca, "--timeout", "5"])
        assert result.exit_code == 1  # no client certificate
        result = run(echo_command, [peer.address, "--tls-key", str(tls["client.key"])])
        assert result.exit_code == 2 and "--tls-key needs --tls-cert" in result.output


def make_tls_files(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, generated here."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def builder(cn: str, issuer: str, public_key: Any) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("store-scp test CA", "store-scp test CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca.pem": tmp_path / "ca.pem"}
    files["ca.pem"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(f"store-scp test {role}", "store-scp test CA", key.public_key())
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOCALHOST))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        files[f"{role}.pem"] = tmp_path / f"{role}.pem"
        files[f"{role}.key"] = tmp_path / f"{role}.key"
        files[f"{role}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


# ---------------------------------------------------------------------------------------------
# Pure parts


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:104") == ("127.0.0.1", 104)
    assert parse_address("[::1]:11112") == ("::1", 11112)
    assert parse_address("pacs.example:2762") == ("pacs.example", 2762)
    for bad in ("127.0.0.1", "::1:11112", "host:0", "host:70000", ":104", "[]:104", "h:x"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_read_part10_matches_pydicom_for_every_bundled_file() -> None:
    ct = bundled("CT_small.dcm")
    assert ct is not None
    checked = 0
    for path in sorted(ct.parent.glob("*.dcm")):
        try:
            info = scu.read_part10(path)
        except (scu.NotPart10Error, scu.InvalidPart10Error):
            continue
        uid, syntax, data = split_part10(path)
        assert info.transfer_syntax_uid == syntax, path.name
        assert info.sop_instance_uid == uid or not uid, path.name
        assert path.stat().st_size - info.dataset_offset == len(data), path.name
        checked += 1
    assert checked > 50


def test_read_part10_rejects_what_it_cannot_send(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("hello")
    with pytest.raises(scu.NotPart10Error):
        scu.read_part10(text)
    no_syntax = bundled("meta_missing_tsyntax.dcm")
    assert no_syntax is not None
    with pytest.raises(scu.InvalidPart10Error, match="Transfer Syntax"):
        scu.read_part10(no_syntax)
    meta_only = tmp_path / "meta_only.dcm"
    ct = bundled("CT_small.dcm")
    assert ct is not None
    meta_only.write_bytes(ct.read_bytes()[: scu.read_part10(ct).dataset_offset])
    with pytest.raises(scu.InvalidPart10Error, match="no data set"):
        scu.read_part10(meta_only)


def test_plan_associations_groups_pairs_by_128() -> None:
    files = [
        scu.FileToSend(Path(f"{i}"), f"1.2.{i % 130}", f"1.3.{i}", "1.2.840.10008.1.2.1", 0, 2)
        for i in range(300)
    ]
    plan = scu.plan_associations(files)
    assert [len(contexts) for contexts, _ in plan] == [128, 2]
    assert sum(len(group) for _, group in plan) == 300
    for contexts, group in plan:
        proposed = {(abstract, syntaxes[0]) for abstract, syntaxes in contexts}
        assert all(len(syntaxes) == 1 for _, syntaxes in contexts)
        assert {f.pair for f in group} == proposed


def test_chunk_reader_fills_across_chunks() -> None:
    reader = scu._as_reader(iter([b"ab", b"", b"cde", b"f"]))
    buf = bytearray(4)
    assert scu._fill(reader, memoryview(buf)) == 4 and buf == b"abcd"
    assert scu._fill(reader, memoryview(buf)) == 2 and buf[:2] == b"ef"
    assert scu._fill(scu._as_reader(io.BytesIO(b"xyz")), memoryview(buf)) == 3
