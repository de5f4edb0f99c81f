"""atheris fuzz target for the sans-IO protocol core (not part of the default test suite).

One input drives four consumers:
- `PDUReader`: only `PDUError` may escape, and it never buffers more than the largest PDU it
  accepts plus its 6-byte header;
- `PDUStreamReader`: never raises (errors land in `.error`), same buffering bound;
- an acceptor `Association` (answering requests with our negotiation): `receive_data` must
  never raise, whatever arrives, and must end in Sta1 once the peer closes;
- `HeaderScanner` in one of four encodings: only `HeaderError` may escape.

The whole input is the byte stream; its last two bytes also choose the chunk size and the
dataset encoding. See fuzz/README.md for how to run it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from store_scp.dicom import association as A
    from store_scp.dicom import pdu as P
    from store_scp.dicom.header import HeaderError, HeaderScanner
    from store_scp.dicom.negotiation import Policy, negotiate

MAX_PDATA = 4096
MAX_ASSOCIATE = 64 * 1024
BUFFER_BOUND = max(MAX_PDATA, MAX_ASSOCIATE) + 6
POLICY = Policy(ae_title="STORE_SCP", max_pdu_length=MAX_PDATA)
# (explicit VR, little endian, deflated)
ENCODINGS = ((True, True, False), (False, True, False), (True, False, False), (True, True, True))


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _reader(parts: list[bytes]) -> None:
    reader = P.PDUReader(MAX_PDATA, MAX_ASSOCIATE)
    for part in parts:
        try:
            reader.feed(part)
        except P.PDUError:
            return
        if reader.buffered > BUFFER_BOUND:
            raise AssertionError(f"reader buffers {reader.buffered} bytes")


def _stream_reader(parts: list[bytes]) -> None:
    reader = P.PDUStreamReader(MAX_PDATA, MAX_ASSOCIATE)
    for part in parts:
        reader.feed(bytearray(part))  # reports errors in reader.error, never raises
        if reader.buffered > BUFFER_BOUND:
            raise AssertionError(f"stream reader buffers {reader.buffered} bytes")
        if reader.error is not None and not isinstance(reader.error, P.PDUError):
            raise AssertionError(f"stream reader error {reader.error!r}")


def _answer(assoc: A.Association, request: P.AssociateRQ) -> None:
    outcome = negotiate(request, POLICY)
    if outcome.accept is not None:
        # Keep ASCII AE titles in the answer: non-ASCII ones are a known, separately tested
        # issue and would hide everything after it.
        outcome.accept.called_ae, outcome.accept.calling_ae = "STORE_SCP", "PEER"
        assoc.send_accept(outcome.accept)
    elif outcome.reject is not None:
        assoc.send_reject(outcome.reject)


def _acceptor(parts: list[bytes]) -> None:
    assoc = A.Association(
        A.Role.ACCEPTOR, max_pdata_length=MAX_PDATA, max_associate_length=MAX_ASSOCIATE
    )
    assoc.connection_made()
    for part in parts:
        if assoc.state is A.State.STA1:
            break
        for event in assoc.receive_data(part):
            if isinstance(event, A.AssociationRequested) and assoc.state is A.State.STA3:
                _answer(assoc, event.request)
            elif isinstance(event, A.ReleaseRequested) and assoc.state is A.State.STA8:
                assoc.send_release_response()
        assoc.data_to_send()
    if assoc.state is not A.State.STA1:
        assoc.receive_data(b"")
    if assoc.state is not A.State.STA1:
        raise AssertionError(f"association left in {assoc.state.name} after the peer closed")


def _scanner(parts: list[bytes], encoding: int) -> None:
    explicit, little, deflated = ENCODINGS[encoding % len(ENCODINGS)]
    scanner = HeaderScanner(explicit, little, deflated)
    try:
        for part in parts:
            scanner.feed(part)
        scanner.finish()
    except HeaderError:
        pass


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    # The last two bytes also pick the chunking and the encoding, so that a seed that is a
    # valid PDU stream (a capture) stays valid as a whole.
    size, encoding = data[-1] * 16 + 1, data[-2]
    parts = _chunks(data, size)
    _reader(parts)
    _stream_reader(parts)
    _acceptor(parts)
    _scanner(parts, encoding)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
