"""Hostile input against the real server process: malformed and unexpected PDUs, stalled and
broken associations, limits, access control, a full disk and a shutdown mid-transfer.

For every case: the right status or rejection comes back, the server keeps serving others (a
real DCMTK echoscu afterwards), and no partial object is ever visible.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from store_scp.dicom import dimse
from store_scp.dicom import pdu as P
from tests.serverproc import DCMTK, ServerProcess, start_server, wait_for

from .rawclient import (
    CT_IMAGE_STORAGE,
    DEFLATED_LE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    VERIFICATION,
    PeerClosed,
    RawClient,
    associate_rq,
    close_all,
    deflate,
    file_meta_elements,
    make_dataset,
    new_uid,
    open_many,
    split_part10,
    status_of,
)

HOST = "127.0.0.1"
SMALL_PDU = 16384
BASE_ENV = {"STORE_SCP_MAX_PDU_LENGTH": str(SMALL_PDU)}
StartServer = Callable[..., ServerProcess]


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[StartServer]:
    """Start servers (BASE_ENV plus the given variables); all are stopped at teardown."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, name: str = "srv") -> ServerProcess:
        server = start_server(tmp_path / name, env={**BASE_ENV, **(env or {})})
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


#: Where each server's log starts for the current test (a shared server serves many tests).
_LOG_START: dict[int, int] = {}


@pytest.fixture(scope="module")
def shared_servers() -> Iterator[list[ServerProcess]]:
    holder: list[ServerProcess] = []
    yield holder
    for server in holder:
        server.stop()


@pytest.fixture
def server(
    shared_servers: list[ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    """A server with the default settings, shared by the tests of this module that need no
    setting of their own (started again if a test left it dead)."""
    if not shared_servers or shared_servers[-1].proc.poll() is not None:
        shared_servers.append(start_server(tmp_path_factory.mktemp("shared") / "srv", env=BASE_ENV))
    current = shared_servers[-1]
    _LOG_START[id(current)] = len(current.log_path.read_bytes())
    return current


def records(server: ServerProcess) -> list[dict[str, Any]]:
    """The JSON log lines this server wrote during the current test."""
    with open(server.log_path, "rb") as fh:
        fh.seek(_LOG_START.get(id(server), 0))
        text = fh.read().decode(errors="replace")
    out: list[dict[str, Any]] = []
    # Complete lines only: the server may be writing the last one right now.
    for line in text.split("\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            out.append({"level": "RAW", "msg": line})
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def wait_for_log(
    server: ServerProcess, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in records(server):
            if predicate(record):
                return record
        if time.monotonic() > deadline:
            lines = "\n".join(json.dumps(r) for r in records(server))
            raise AssertionError(f"expected log line not found; log:\n{lines[-4000:]}")
        time.sleep(0.05)


def assert_no_errors(server: ServerProcess) -> None:
    """No ERROR line, no traceback, nothing that is not a JSON log line."""
    bad = [
        r
        for r in records(server)
        if r.get("level") in ("ERROR", "CRITICAL", "RAW") or "exc" in r or "Traceback" in r["msg"]
    ]
    assert not bad, f"unexpected error log lines: {bad}"


def echoscu(server: ServerProcess, *extra: str, port: int | None = None) -> None:
    """A real DCMTK C-ECHO must succeed: the server keeps serving others."""
    cmd = [str(DCMTK / "echoscu"), "-to", "5", "-ta", "5", "-td", "5", "-aec", "STORE_SCP"]
    cmd += [*extra, HOST, str(port or server.port)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"echoscu failed: {result.stdout}{result.stderr}"


def wait_staging_empty(server: ServerProcess, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while server.staging_files():
        if time.monotonic() > deadline:
            raise AssertionError(f"staging files left behind: {server.staging_files()}")
        time.sleep(0.05)


def assert_no_partial(server: ServerProcess, before: list[Path]) -> None:
    wait_staging_empty(server)
    assert server.stored_files() == before


def stored_dataset(server: ServerProcess, sop_instance_uid: str) -> bytes:
    """The data set bytes of the one stored object of that SOP Instance UID."""
    matches = [p for p in server.stored_files() if p.name == f"{sop_instance_uid}.dcm"]
    assert len(matches) == 1, f"expected one stored {sop_instance_uid}, found {matches}"
    return split_part10(matches[0].read_bytes())[1]


def assert_stored(server: ServerProcess, sop_instance_uid: str, dataset: bytes) -> None:
    assert stored_dataset(server, sop_instance_uid) == dataset


def associated(
    server: ServerProcess,
    contexts: Any = None,
    *,
    calling_ae: str = "RAW_SCU",
    timeout: float = 5.0,
) -> RawClient:
    client = RawClient.connect(HOST, server.port, timeout=timeout)
    answer = (
        client.associate(contexts, calling_ae=calling_ae)
        if contexts
        else client.associate(calling_ae=calling_ae)
    )
    assert isinstance(answer, P.AssociateAC), answer
    return client


def expect_abort(client: RawClient, timeout: float = 5.0) -> P.Abort:
    """The server sends an A-ABORT, then closes the connection."""
    try:
        pdu = client.read_pdu(timeout)
    except PeerClosed as exc:
        raise AssertionError("the server closed the connection without an A-ABORT") from exc
    assert isinstance(pdu, P.Abort), f"expected A-ABORT, got {pdu!r}"
    client.wait_closed(timeout)
    return pdu


def expect_reject(
    answer: P.AssociateAC | P.AssociateRJ, result: int, source: int, reason: int
) -> None:
    assert isinstance(answer, P.AssociateRJ), f"expected A-ASSOCIATE-RJ, got {answer!r}"
    assert (answer.result, answer.source, answer.reason) == (result, source, reason)


def ct_small() -> Path:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return Path(str(path))


def storescu(server: ServerProcess, *files: Path) -> None:
    cmd = [str(DCMTK / "storescu"), "-to", "10", "-ta", "10", "-td", "10", "-aec", "STORE_SCP"]
    cmd += [HOST, str(server.port), *map(str, files)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"storescu failed: {result.stdout}{result.stderr}"


# --------------------------------------------------------------------------------------------
# malformed and unexpected PDUs


@pytest.mark.parametrize("where", ["associate-rq", "pdata-mid-dataset"])
def test_truncated_pdu_then_close(server: ServerProcess, where: str) -> None:
    before = server.stored_files()
    if where == "associate-rq":
        client = RawClient.connect(HOST, server.port)
        client.send(P.encode(associate_rq())[:40])
    else:
        client = associated(server)
        ctx = client.context_for(CT_IMAGE_STORAGE)
        client.start_store(ctx, CT_IMAGE_STORAGE, new_uid())
        dataset = make_dataset(new_uid(), payload=40000)
        client.send_dataset(ctx, dataset[:20000], fragment_size=8000, last=False)
        pdu = P.encode_pdata([P.PDV(ctx, False, True, dataset[20000:])])
        client.send(pdu[: len(pdu) // 2])  # a PDU that never completes
    time.sleep(0.2)
    client.close()
    assert_no_partial(server, before)
    echoscu(server)
    assert_no_errors(server)


@pytest.mark.parametrize(
    "case", ["pdata-over-announced-maximum", "associate-rq-over-cap", "release-rq-wrong-length"]
)
def test_oversized_pdu_is_aborted(server: ServerProcess, case: str) -> None:
    before = server.stored_files()
    if case == "associate-rq-over-cap":
        client = RawClient.connect(HOST, server.port)
        client.send(P.PDU_HEADER.pack(P.A_ASSOCIATE_RQ, 0x7FFFFFFF) + bytes(1024))
    else:
        client = associated(server)
        if case == "release-rq-wrong-length":
            client.send(P.PDU_HEADER.pack(P.A_RELEASE_RQ, 1000) + bytes(1000))
        else:
            assert client.server_max_pdu == SMALL_PDU
            ctx = client.context_for(CT_IMAGE_STORAGE)
            client.start_store(ctx, CT_IMAGE_STORAGE, new_uid())
            body = P.encode_pdata([P.PDV(ctx, False, True, bytes(SMALL_PDU - 5))])
            assert P.PDU_HEADER.unpack_from(body)[1] == SMALL_PDU + 1
            client.send(body[:4096])  # the header alone must be enough to refuse it
    peer = client.local_address  # the previous test's abort may be logged late
    abort = expect_abort(client)
    assert abort.source == 2  # service provider
    assert abort.reason == 6  # invalid parameter value
    wait_for_log(
        server, lambda r: r["msg"] == "association aborted: protocol error" and r["peer"] == peer
    )
    client.close()
    assert_no_partial(server, before)
    echoscu(server)
    assert_no_errors(server)


def test_pdata_before_association_is_aborted(server: ServerProcess) -> None:
    client = RawClient.connect(HOST, server.port)
    client.send(P.encode_pdata([P.PDV(1, True, True, dimse.c_echo_rq(1))]))
    abort = expect_abort(client)
    assert (abort.source, abort.reason) == (2, 2)  # provider, unexpected PDU
    client.close()
    echoscu(server)
    assert_no_errors(server)


def test_associate_rq_twice_is_aborted(server: ServerProcess) -> None:
    client = associated(server)
    client.send_pdu(associate_rq())
    abort = expect_abort(client)
    assert (abort.source, abort.reason) == (2, 2)
    client.close()
    echoscu(server)
    assert_no_errors(server)


def test_associate_rq_twice_pipelined_is_aborted(server: ServerProcess) -> None:
    client = RawClient.connect(HOST, server.port)
    client.send(P.encode(associate_rq()) * 2)
    pdus = client.wait_closed(5)
    assert [type(p) for p in pdus] == [P.Abort], pdus  # never an A-ASSOCIATE-AC
    client.close()
    echoscu(server)
    assert_no_errors(server)


@pytest.mark.parametrize(
    "case", ["binary-before-association", "http-request", "binary-after-association"]
)
def test_garbage_bytes_unknown_pdu_type(server: ServerProcess, case: str) -> None:
    if case == "binary-after-association":
        client = associated(server)
    else:
        client = RawClient.connect(HOST, server.port)
    if case == "http-request":
        client.send(b"GET / HTTP/1.1\r\nHost: store-scp\r\n\r\n")
    else:
        client.send(bytes([0xFF, 0x00, 0x00, 0x00, 0x00, 0x10]) + os.urandom(16))
    abort = expect_abort(client)
    assert (abort.source, abort.reason) == (2, 1)  # provider, unrecognized PDU
    client.close()
    echoscu(server)
    assert_no_errors(server)


# --------------------------------------------------------------------------------------------
# DIMSE messages cut in unusual places


def test_command_set_split_across_pdus_works(server: ServerProcess) -> None:
    client = associated(server)
    uid = new_uid()
    dataset = make_dataset(uid, payload=30000)
    command_length = len(dimse.c_store_rq(1, CT_IMAGE_STORAGE, uid))
    rsp = client.c_store(
        dataset, sop_instance_uid=uid, command_fragment=command_length // 4 + 1,
        fragment_size=7000,
    )  # fmt: skip
    assert status_of(rsp) == dimse.SUCCESS
    assert rsp.get(dimse.AFFECTED_SOP_INSTANCE_UID) == uid
    # A one-byte-per-PDU command set works too.
    uid2 = new_uid()
    dataset2 = make_dataset(uid2, payload=100)
    rsp = client.c_store(dataset2, sop_instance_uid=uid2, command_fragment=1)
    assert status_of(rsp) == dimse.SUCCESS
    client.release()
    assert_stored(server, uid, dataset)
    assert_stored(server, uid2, dataset2)
    wait_staging_empty(server)
    assert_no_errors(server)


def _partial_store(client: RawClient) -> str:
    """A C-STORE command and half its data set, without the last fragment."""
    ctx = client.context_for(CT_IMAGE_STORAGE)
    uid = new_uid()
    client.start_store(ctx, CT_IMAGE_STORAGE, uid)
    dataset = make_dataset(uid, payload=60000)
    client.send_dataset(ctx, dataset[:30000], fragment_size=8000, last=False)
    return uid


def test_dataset_without_last_fragment_then_abort(server: ServerProcess) -> None:
    before = server.stored_files()
    client = associated(server)
    peer = client.local_address  # the shared server may still be logging the last test's end
    _partial_store(client)
    wait_for(server.staging_files, "the data set streaming into a staging file", 5)
    client.abort()
    assert client.wait_closed(5) == []
    client.close()
    assert_no_partial(server, before)
    ended = wait_for_log(server, lambda r: r["msg"] == "association ended" and r["peer"] == peer)
    assert (ended["stored"], ended["bytes"]) == (0, 0)
    echoscu(server)
    assert_no_errors(server)


def test_peer_abort_is_logged(server: ServerProcess) -> None:
    client = associated(server)
    peer = client.local_address
    _partial_store(client)
    client.abort()
    client.wait_closed(5)
    client.close()
    wait_for_log(
        server, lambda r: r["msg"] == "association aborted by peer" and r["peer"] == peer, timeout=1
    )


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_dataset_without_last_fragment_then_tcp_close(server: ServerProcess, close: str) -> None:
    before = server.stored_files()
    client = associated(server)
    _partial_store(client)
    time.sleep(0.2)
    client.close(reset=close == "rst")
    assert_no_partial(server, before)
    echoscu(server)
    assert_no_errors(server)


# --------------------------------------------------------------------------------------------
# timers and many connections


def test_idle_after_connect_closed_by_artim(servers: StartServer) -> None:
    server = servers({"STORE_SCP_ARTIM_TIMEOUT": "1"})
    client = RawClient.connect(HOST, server.port)
    t0 = time.monotonic()
    assert client.wait_closed(5) == []
    elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 3.0, elapsed
    client.close()
    echoscu(server)
    assert_no_errors(server)


def test_many_idle_connections_while_storescu_works(server: ServerProcess) -> None:
    before = server.stored_files()
    idle = open_many(HOST, server.port, 25)
    try:
        for n in range(25):  # 25 more: associated, then silent (per-AE limit is 16)
            idle.append(associated(server, calling_ae=f"IDLE{n:02d}"))
        t0 = time.monotonic()
        storescu(server, ct_small())
        echoscu(server)
        assert time.monotonic() - t0 < 10
        assert len(set(server.stored_files()) - set(before)) == 1
        # The idle associations are still there and still answer.
        assert idle[-1].c_echo() == dimse.SUCCESS
    finally:
        close_all(idle)
    wait_staging_empty(server)
    assert_no_errors(server)


# --------------------------------------------------------------------------------------------
# association limits and access control


def test_too_many_associations(servers: StartServer) -> None:
    server = servers({"STORE_SCP_MAX_ASSOCIATIONS": "2"})
    first = associated(server, calling_ae="SCU_1")
    second = associated(server, calling_ae="SCU_2")
    third = RawClient.connect(HOST, server.port)
    expect_reject(third.associate(calling_ae="SCU_3"), 2, 3, 2)
    third.close()
    rejected = wait_for_log(server, lambda r: r["msg"] == "association rejected")
    assert rejected["why"] == "local limit exceeded"
    assert rejected["calling_ae"] == "SCU_3"
    # A slot comes back when an association ends.
    first.release()
    echoscu(server)
    assert second.c_echo() == dimse.SUCCESS
    second.release()
    assert_no_errors(server)


def test_too_many_associations_per_calling_ae(servers: StartServer) -> None:
    server = servers({"STORE_SCP_MAX_ASSOCIATIONS_PER_AE": "1"})
    first = associated(server, calling_ae="SCU_A")
    again = RawClient.connect(HOST, server.port)
    expect_reject(again.associate(calling_ae="SCU_A"), 2, 3, 2)
    again.close()
    other = associated(server, calling_ae="SCU_B")  # another AE is not limited by SCU_A
    assert other.c_echo() == dimse.SUCCESS
    other.release()
    first.release()
    third = associated(server, calling_ae="SCU_A")  # SCU_A's slot was released
    third.release()
    echoscu(server)
    assert_no_errors(server)


def test_wrong_called_ae_rejected(server: ServerProcess) -> None:
    client = RawClient.connect(HOST, server.port)
    answer = client.associate(called_ae="NOT_US")
    expect_reject(answer, 1, 1, 7)
    client.close()
    record = wait_for_log(server, lambda r: r["msg"] == "association rejected")
    assert record["why"] == "called AE title not recognized"
    echoscu(server)
    assert_no_errors(server)


def test_calling_ae_not_allowed_rejected(servers: StartServer) -> None:
    server = servers({"STORE_SCP_ALLOWED_CALLING_AES": "GOOD_SCU,ECHOSCU"})
    client = RawClient.connect(HOST, server.port)
    expect_reject(client.associate(calling_ae="BAD_SCU"), 1, 1, 3)
    client.close()
    record = wait_for_log(server, lambda r: r["msg"] == "association rejected")
    assert record["why"] == "calling AE title not recognized"
    good = associated(server, calling_ae="GOOD_SCU")
    good.release()
    echoscu(server)  # DCMTK's default calling AE is ECHOSCU
    assert_no_errors(server)


def _refused_before_any_pdu(host: str, port: int, source: str | None = None) -> str:
    """Connect (maybe from `source`); the server closes at once, and an A-ASSOCIATE-RQ sent
    on a second connection never gets an answer. Returns the first connection's address."""
    client = RawClient.connect(host, port, source=source)
    address = client.local_address
    t0 = time.monotonic()
    assert client.wait_closed(3) == []
    assert time.monotonic() - t0 < 2
    client.close()
    client = RawClient.connect(host, port, source=source)
    with contextlib.suppress(OSError):  # maybe already reset
        client.send_pdu(associate_rq())
    assert client.wait_closed(3) == []  # no A-ASSOCIATE-AC, no PDU at all
    client.close()
    return address


def test_peer_outside_allowed_networks_ipv4(servers: StartServer) -> None:
    # 127.0.0.2 is a loopback address of its own: outside 127.0.0.1/32.
    server = servers({"STORE_SCP_ALLOWED_NETWORKS": "10.0.0.0/8,127.0.0.1/32"})
    address = _refused_before_any_pdu(HOST, server.port, source="127.0.0.2")
    assert address.startswith("127.0.0.2:")
    record = wait_for_log(server, lambda r: r.get("peer") == address)
    assert record["msg"] == "connection refused: peer outside the allowed networks"
    assert record["level"] == "WARNING"
    echoscu(server)  # 127.0.0.1 is inside


def test_refused_peer_logs_no_error(servers: StartServer) -> None:
    server = servers({"STORE_SCP_ALLOWED_NETWORKS": "10.0.0.0/8,127.0.0.1/32"})
    _refused_before_any_pdu(HOST, server.port, source="127.0.0.2")
    echoscu(server)
    time.sleep(0.2)
    assert_no_errors(server)


def test_peer_outside_allowed_networks_ipv6(servers: StartServer) -> None:
    server = servers({"STORE_SCP_BIND": "::1", "STORE_SCP_ALLOWED_NETWORKS": "10.0.0.0/8"})
    _refused_before_any_pdu("::1", server.port)
    wait_for_log(
        server,
        lambda r: (
            r["msg"] == "connection refused: peer outside the allowed networks"
            and str(r.get("peer", "")).startswith("::1:")
        ),
    )
    assert not [r for r in records(server) if r["msg"] == "association accepted"]


@pytest.mark.parametrize(
    "close",
    [
        "fin",
        "rst",
    ],
)
def test_tcp_probe_not_logged_as_error(servers: StartServer, close: str) -> None:
    server = servers({"STORE_SCP_LOG_LEVEL": "DEBUG"})
    addresses = []
    for _ in range(3):
        client = RawClient.connect(HOST, server.port)
        addresses.append(client.local_address)
        client.close(reset=close == "rst")
    echoscu(server)
    time.sleep(0.3)
    for address in addresses:
        about = [r for r in records(server) if r.get("peer") == address]
        assert all(r["level"] in ("DEBUG", "INFO") for r in about), about
    assert not [r for r in records(server) if r["level"] in ("WARNING", "ERROR")]
    assert_no_errors(server)


def test_tls_client_hello_on_plain_port(server: ServerProcess) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection((HOST, server.port), timeout=5)
    address = "{}:{}".format(*sock.getsockname()[:2])
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(sock)  # the handshake fails: the server closes the connection
    sock.close()
    record = wait_for_log(server, lambda r: r.get("peer") == address)
    assert "TLS ClientHello on the plain DICOM port" in record["msg"]
    echoscu(server)
    assert_no_errors(server)


# --------------------------------------------------------------------------------------------
# C-STORE validation


@pytest.mark.parametrize("which", ["sop-instance", "sop-class"])
def test_uid_mismatch_refused_0xa900(server: ServerProcess, which: str) -> None:
    before = server.stored_files()
    client = associated(server)
    uid = new_uid()
    if which == "sop-instance":
        dataset = make_dataset(new_uid())
    else:
        dataset = make_dataset(uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.4")  # MR
    rsp = client.c_store(dataset, sop_instance_uid=uid)
    assert status_of(rsp) == dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert rsp.get(dimse.ERROR_COMMENT)
    assert_no_partial(server, before)
    # The association is still usable.
    good_uid = new_uid()
    good = make_dataset(good_uid)
    assert status_of(client.c_store(good, sop_instance_uid=good_uid)) == dimse.SUCCESS
    client.release()
    assert_stored(server, good_uid, good)
    assert not [p for p in server.stored_files() if p.name == f"{uid}.dcm"]
    echoscu(server)
    assert_no_errors(server)


def test_no_staging_file_once_release_answered(server: ServerProcess) -> None:
    """The server keeps a staging file open for the next object; by the time the peer has
    its A-RELEASE-RP that file is gone, even while the peer keeps the connection open."""
    client = associated(server)
    try:
        uid = new_uid()
        assert status_of(client.c_store(make_dataset(uid), sop_instance_uid=uid)) == dimse.SUCCESS
        # The spare is opened just after the response.
        wait_for(server.staging_files, "a spare staging file between objects", 5)
        client.send_pdu(P.ReleaseRQ())
        assert isinstance(client.read_pdu(), P.ReleaseRP)
        assert server.staging_files() == []
    finally:
        client.close()


def test_object_over_max_size_refused_0xa700(servers: StartServer) -> None:
    server = servers({"STORE_SCP_MAX_OBJECT_SIZE": "65536"})
    before = server.stored_files()
    client = associated(server)
    big_uid = new_uid()
    big = make_dataset(big_uid, payload=300_000)
    rsp = client.c_store(big, sop_instance_uid=big_uid, fragment_size=8000)
    assert status_of(rsp) == dimse.OUT_OF_RESOURCES
    assert "larger than" in str(rsp.get(dimse.ERROR_COMMENT))
    assert_no_partial(server, before)
    # The rest of the big stream was discarded; the next C-STORE works.
    uid = new_uid()
    dataset = make_dataset(uid, payload=20_000)
    assert status_of(client.c_store(dataset, sop_instance_uid=uid)) == dimse.SUCCESS
    assert client.c_echo() == dimse.SUCCESS
    client.release()
    assert_stored(server, uid, dataset)
    assert len(server.stored_files()) == 1
    echoscu(server)
    assert_no_errors(server)


@pytest.mark.parametrize("stall", ["mid-dataset", "mid-command"])
def test_dimse_timeout_aborts(servers: StartServer, stall: str) -> None:
    server = servers({"STORE_SCP_DIMSE_TIMEOUT": "1"})
    before = server.stored_files()
    client = associated(server)
    if stall == "mid-dataset":
        _partial_store(client)
    else:
        ctx = client.context_for(CT_IMAGE_STORAGE)
        command = dimse.c_store_rq(1, CT_IMAGE_STORAGE, new_uid())
        client.send(P.encode_pdata([P.PDV(ctx, True, False, command[:20])]))
    t0 = time.monotonic()
    expect_abort(client, timeout=5)
    assert 0.8 <= time.monotonic() - t0 <= 4
    client.close()
    record = wait_for_log(server, lambda r: r["msg"] == "association aborted")
    assert record["why"] == "DIMSE timeout"
    assert_no_partial(server, before)
    echoscu(server)
    assert_no_errors(server)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted where the server keeps its objects (root only)."""
    mountpoint = tmp_path / "srv" / "objects"
    mountpoint.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def test_disk_full(small_tmpfs: Path, servers: StartServer) -> None:
    server = servers()  # its objects folder is the tmpfs
    assert server.objects_dir == small_tmpfs
    try:
        client = associated(server)
        results: list[tuple[str, bytes, int]] = []
        failures_in_a_row = 0
        for _ in range(30):
            uid = new_uid()
            dataset = make_dataset(uid, payload=300_000)
            status = status_of(client.c_store(dataset, sop_instance_uid=uid, timeout=10))
            results.append((uid, dataset, status))
            failures_in_a_row = failures_in_a_row + 1 if status != dimse.SUCCESS else 0
            if failures_in_a_row == 3:
                break
        assert client.c_echo() == dimse.SUCCESS  # the association survived the full disk
        client.release()
        statuses = [status for _, _, status in results]
        assert set(statuses) <= {dimse.SUCCESS, dimse.OUT_OF_RESOURCES}, statuses
        assert statuses.count(dimse.SUCCESS) >= 1, statuses
        assert failures_in_a_row == 3, statuses
        wait_staging_empty(server)
        stored_names = {p.name for p in server.stored_files()}
        for uid, dataset, status in results:
            if status == dimse.SUCCESS:
                assert_stored(server, uid, dataset)
            else:
                assert f"{uid}.dcm" not in stored_names
        assert len(stored_names) == statuses.count(dimse.SUCCESS)
        echoscu(server)
        refused = [r for r in records(server) if r["msg"] == "store refused"]
        assert len(refused) == statuses.count(dimse.OUT_OF_RESOURCES)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "fragment",
    [
        pytest.param(50, id="meta-split-across-fragments"),
        pytest.param(None, id="meta-in-first-fragment"),
    ],
)
def test_file_meta_in_dataset_is_stripped(server: ServerProcess, fragment: int | None) -> None:
    client = associated(server)
    uid = new_uid()
    body = make_dataset(uid)
    prefix = file_meta_elements(CT_IMAGE_STORAGE, uid, EXPLICIT_LE)
    rsp = client.c_store(prefix + body, sop_instance_uid=uid, fragment_size=fragment)
    assert status_of(rsp) == dimse.SUCCESS
    client.release()
    record = wait_for_log(server, lambda r: r["msg"].startswith("data set carried File Meta"))
    assert record["level"] == "WARNING"
    assert record["bytes"] == len(prefix)
    assert_stored(server, uid, body)  # the leading group 0002 elements are gone, the rest kept
    wait_staging_empty(server)
    assert_no_errors(server)


@pytest.mark.parametrize(
    "fragment",
    [
        pytest.param(4, id="meta-split-across-fragments"),
        pytest.param(None, id="meta-in-first-fragment"),
    ],
)
def test_file_meta_in_deflated_dataset_refused_0xc002(
    server: ServerProcess, fragment: int | None
) -> None:
    client = associated(
        server, [(CT_IMAGE_STORAGE, (DEFLATED_LE,)), (VERIFICATION, (IMPLICIT_LE,))]
    )
    ctx = client.context_for(CT_IMAGE_STORAGE, DEFLATED_LE)
    before = server.stored_files()
    uid = new_uid()
    carrying = deflate(file_meta_elements(CT_IMAGE_STORAGE, uid, DEFLATED_LE) + make_dataset(uid))
    rsp = client.c_store(carrying, sop_instance_uid=uid, ctx_id=ctx, fragment_size=fragment)
    try:
        assert status_of(rsp) == dimse.CANNOT_UNDERSTAND_FILE_META_IN_DATASET
        assert_no_partial(server, before)
        # A deflated data set without them is stored byte for byte.
        uid2 = new_uid()
        clean = deflate(make_dataset(uid2))
        rsp = client.c_store(clean, sop_instance_uid=uid2, ctx_id=ctx, fragment_size=fragment)
        assert status_of(rsp) == dimse.SUCCESS
        client.release()
        assert_stored(server, uid2, clean)
        echoscu(server)
        assert_no_errors(server)
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# shutdown


def test_sigterm_mid_dataset(servers: StartServer) -> None:
    grace = 3.0  # the finishing association must end within it on a loaded machine
    server = servers({"STORE_SCP_SHUTDOWN_GRACE": str(grace)})
    # A completed association before the signal.
    done = associated(server)
    done_uid = new_uid()
    done_dataset = make_dataset(done_uid, payload=50_000)
    assert status_of(done.c_store(done_dataset, sop_instance_uid=done_uid)) == dimse.SUCCESS
    done.release()
    # One association that will finish within the grace period, one that stalls.
    finishing = associated(server, calling_ae="FINISHER")
    ctx = finishing.context_for(CT_IMAGE_STORAGE)
    finishing_uid = new_uid()
    finishing_dataset = make_dataset(finishing_uid, payload=50_000)
    finishing.start_store(ctx, CT_IMAGE_STORAGE, finishing_uid)
    finishing.send_dataset(ctx, finishing_dataset[:20_000], last=False)
    stalled = associated(server, calling_ae="STALLER")
    _partial_store(stalled)
    time.sleep(0.2)

    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    wait_for_log(server, lambda r: r["msg"] == "shutting down")
    with pytest.raises(ConnectionRefusedError):  # no longer accepting
        socket.create_connection((HOST, server.port), timeout=2).close()
    finishing.send_dataset(ctx, finishing_dataset[20_000:])
    assert status_of(finishing.read_command()) == dimse.SUCCESS
    finishing.release()

    abort = expect_abort(stalled, timeout=grace + 5)
    waited = time.monotonic() - t0
    assert grace - 0.3 <= waited <= grace + 3, waited
    assert abort.source in (0, 2)
    stalled.close()
    assert server.proc.wait(10) == 0
    assert_stored(server, done_uid, done_dataset)
    assert_stored(server, finishing_uid, finishing_dataset)
    assert len(server.stored_files()) == 2
    assert server.staging_files() == []
    assert_no_errors(server)
