"""The DICOM Upper Layer state machine (PS3.8 section 9.2), sans-IO.

Bytes in -> events out (`receive_data`); local primitives in -> bytes out (the `send_*`
methods); bytes to write accumulate in an outbox read with `data_to_send()`. The driver owns
the socket and the clock: it starts the ARTIM timer while `artim_running` is true and calls
`artim_expired()` when it fires, and it closes the transport when `should_close` is true.

The state table is data (`TRANSITIONS`: (state, event) -> (action, next state)); each action
is a small method. A (state, event) pair missing from the table is a local misuse for a
primitive (`LocalError`) and, for a received PDU, handled as PS3.8 says for an unexpected PDU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum

from . import pdu as P


class State(IntEnum):
    STA1 = 1  # idle
    STA2 = 2  # transport open, awaiting A-ASSOCIATE-RQ
    STA3 = 3  # awaiting local A-ASSOCIATE response
    STA4 = 4  # awaiting transport connection to open
    STA5 = 5  # awaiting A-ASSOCIATE-AC or -RJ
    STA6 = 6  # association established
    STA7 = 7  # awaiting A-RELEASE-RP
    STA8 = 8  # awaiting local A-RELEASE response
    STA9 = 9  # release collision, requestor: awaiting local A-RELEASE response
    STA10 = 10  # release collision, acceptor: awaiting A-RELEASE-RP
    STA11 = 11  # release collision, requestor: awaiting A-RELEASE-RP
    STA12 = 12  # release collision, acceptor: awaiting local A-RELEASE response
    STA13 = 13  # awaiting transport close


class Evt(IntEnum):
    ASSOCIATE_RQ_PRIMITIVE = 1
    TRANSPORT_CONFIRM = 2
    AC_PDU = 3
    RJ_PDU = 4
    TRANSPORT_INDICATION = 5
    RQ_PDU = 6
    ACCEPT_PRIMITIVE = 7
    REJECT_PRIMITIVE = 8
    PDATA_PRIMITIVE = 9
    PDATA_PDU = 10
    RELEASE_RQ_PRIMITIVE = 11
    RELEASE_RQ_PDU = 12
    RELEASE_RP_PDU = 13
    RELEASE_RP_PRIMITIVE = 14
    ABORT_PRIMITIVE = 15
    ABORT_PDU = 16
    TRANSPORT_CLOSED = 17
    ARTIM_EXPIRED = 18
    INVALID_PDU = 19


class Role(Enum):
    ACCEPTOR = "acceptor"
    REQUESTOR = "requestor"


class LocalError(Exception):
    """The local user asked for something the current state does not allow."""


# --- Events handed to the user --------------------------------------------------------------


@dataclass(slots=True)
class AssociationRequested:
    """A-ASSOCIATE indication: answer with send_accept or send_reject."""

    request: P.AssociateRQ


@dataclass(slots=True)
class AssociationAccepted:
    accept: P.AssociateAC


@dataclass(slots=True)
class AssociationRejected:
    reject: P.AssociateRJ


@dataclass(slots=True)
class DataReceived:
    pdvs: list[P.PDV]


@dataclass(slots=True)
class ReleaseRequested:
    """A-RELEASE indication (also in a release collision): answer with send_release_response."""


@dataclass(slots=True)
class ReleaseConfirmed:
    pass


@dataclass(slots=True)
class Aborted:
    """A-ABORT (peer_abort) or A-P-ABORT indication; the association is gone."""

    source: int
    reason: int
    by_peer: bool
    detail: str = ""


Event = (
    AssociationRequested
    | AssociationAccepted
    | AssociationRejected
    | DataReceived
    | ReleaseRequested
    | ReleaseConfirmed
    | Aborted
)

S = State
E = Evt
_PROTOCOL_ERROR_EVENTS = (E.AC_PDU, E.RJ_PDU, E.RQ_PDU, E.PDATA_PDU, E.RELEASE_RQ_PDU)

# PS3.8 Table 9-10, as data: (state, event) -> (action name, next state or None when the
# action decides). Rows follow the standard's order.
TRANSITIONS: dict[tuple[State, Evt], tuple[str, State | None]] = {
    (S.STA1, E.ASSOCIATE_RQ_PRIMITIVE): ("ae1", S.STA4),
    (S.STA1, E.TRANSPORT_INDICATION): ("ae5", S.STA2),
    (S.STA2, E.AC_PDU): ("aa1", S.STA13),
    (S.STA2, E.RJ_PDU): ("aa1", S.STA13),
    (S.STA2, E.RQ_PDU): ("ae6", None),
    (S.STA2, E.PDATA_PDU): ("aa1", S.STA13),
    (S.STA2, E.RELEASE_RQ_PDU): ("aa1", S.STA13),
    (S.STA2, E.RELEASE_RP_PDU): ("aa1", S.STA13),
    (S.STA2, E.ABORT_PDU): ("aa2", S.STA1),
    (S.STA2, E.TRANSPORT_CLOSED): ("aa5", S.STA1),
    (S.STA2, E.ARTIM_EXPIRED): ("aa2", S.STA1),
    (S.STA2, E.INVALID_PDU): ("aa1", S.STA13),
    (S.STA3, E.ACCEPT_PRIMITIVE): ("ae7", S.STA6),
    (S.STA3, E.REJECT_PRIMITIVE): ("ae8", S.STA13),
    (S.STA4, E.TRANSPORT_CONFIRM): ("ae2", S.STA5),
    (S.STA4, E.ABORT_PRIMITIVE): ("aa2", S.STA1),
    (S.STA4, E.TRANSPORT_CLOSED): ("aa4", S.STA1),
    (S.STA5, E.AC_PDU): ("ae3", S.STA6),
    (S.STA5, E.RJ_PDU): ("ae4", S.STA1),
    (S.STA6, E.PDATA_PRIMITIVE): ("dt1", S.STA6),
    (S.STA6, E.PDATA_PDU): ("dt2", S.STA6),
    (S.STA6, E.RELEASE_RQ_PRIMITIVE): ("ar1", S.STA7),
    (S.STA6, E.RELEASE_RQ_PDU): ("ar2", S.STA8),
    (S.STA7, E.PDATA_PDU): ("ar6", S.STA7),
    (S.STA7, E.RELEASE_RQ_PDU): ("ar8", None),
    (S.STA7, E.RELEASE_RP_PDU): ("ar3", S.STA1),
    (S.STA8, E.PDATA_PRIMITIVE): ("ar7", S.STA8),
    (S.STA8, E.RELEASE_RP_PRIMITIVE): ("ar4", S.STA13),
    (S.STA9, E.RELEASE_RP_PRIMITIVE): ("ar9", S.STA11),
    (S.STA10, E.RELEASE_RP_PDU): ("ar10", S.STA12),
    (S.STA11, E.RELEASE_RP_PDU): ("ar3", S.STA1),
    (S.STA12, E.RELEASE_RP_PRIMITIVE): ("ar4", S.STA13),
    (S.STA13, E.ABORT_PDU): ("aa2", S.STA1),
    (S.STA13, E.TRANSPORT_CLOSED): ("ar5", S.STA1),
    (S.STA13, E.ARTIM_EXPIRED): ("aa2", S.STA1),
    (S.STA13, E.RQ_PDU): ("aa7", S.STA13),
}
# The uniform rows of the table: in Sta3 and Sta5-Sta12 an unexpected PDU aborts (AA-8), a
# local abort is AA-1, a received A-ABORT is AA-3 and a lost transport is AA-4; in Sta13 every
# other PDU is ignored (AA-6).
for _state in (S.STA3, S.STA5, S.STA6, S.STA7, S.STA8, S.STA9, S.STA10, S.STA11, S.STA12):
    for _evt in (*_PROTOCOL_ERROR_EVENTS, E.RELEASE_RP_PDU, E.INVALID_PDU):
        TRANSITIONS.setdefault((_state, _evt), ("aa8", S.STA13))
    TRANSITIONS[(_state, E.ABORT_PRIMITIVE)] = ("aa1", S.STA13)
    TRANSITIONS[(_state, E.ABORT_PDU)] = ("aa3", S.STA1)
    TRANSITIONS[(_state, E.TRANSPORT_CLOSED)] = ("aa4", S.STA1)
for _evt in (E.AC_PDU, E.RJ_PDU, E.PDATA_PDU, E.RELEASE_RQ_PDU, E.RELEASE_RP_PDU):
    TRANSITIONS[(S.STA13, _evt)] = ("aa6", S.STA13)
TRANSITIONS[(S.STA13, E.INVALID_PDU)] = ("aa7", S.STA13)

_PDU_EVENTS: dict[type, Evt] = {
    P.AssociateRQ: E.RQ_PDU,
    P.AssociateAC: E.AC_PDU,
    P.AssociateRJ: E.RJ_PDU,
    P.PDataTF: E.PDATA_PDU,
    P.ReleaseRQ: E.RELEASE_RQ_PDU,
    P.ReleaseRP: E.RELEASE_RP_PDU,
    P.Abort: E.ABORT_PDU,
}

ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNEXPECTED_PDU = 2


class Association:
    """One association, either side. Not thread-safe; one driver task owns it."""

    def __init__(
        self,
        role: Role,
        *,
        max_pdata_length: int,
        max_associate_length: int = P.DEFAULT_MAX_ASSOCIATE_LENGTH,
    ) -> None:
        self.role = role
        self.state = State.STA1
        self.artim_running = False
        self.should_close = False
        self.error: str = ""  # why the last protocol abort happened, for the log
        self._reader = P.PDUStreamReader(max_pdata_length, max_associate_length)
        self._pdata_open = False  # the current P-DATA-TF was accepted by the state machine
        self._reader_failed = False
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._pending: P.PDU | None = None  # the PDU or primitive the current action handles
        self._request: P.AssociateRQ | None = None

    # --- driver interface --------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def connection_made(self) -> None:
        """The transport is open: Evt5 for the acceptor, Evt2 for the requestor."""
        if self.role is Role.ACCEPTOR:
            self._handle(E.TRANSPORT_INDICATION)
        else:
            self._handle(E.TRANSPORT_CONFIRM)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Bytes from the peer; b"" means the peer closed the transport (Evt17).

        P-DATA arrives as `DataReceived` events whose PDVs may be partial (a large PDV comes
        in several chunks; only its final chunk has `is_last`). Their data are views of
        `data`: use or copy them before the caller reuses that buffer.
        """
        if self.state is State.STA1:
            return []  # the association is over; late bytes and the close are expected
        if not data:
            self._handle(E.TRANSPORT_CLOSED)
            return self._take_events()
        pdvs: list[P.PDV] = []
        items = self._reader.feed(data)
        for item in items:
            if self.state is State.STA1:
                break
            if isinstance(item, P.PDV):
                if self._pdata_open:
                    pdvs.append(item)
                continue
            if pdvs:
                self._emit(DataReceived(pdvs))
                pdvs = []
            self._pdata_open = False
            self._pending = item
            self._handle(_PDU_EVENTS[type(item)])
        if pdvs:
            self._emit(DataReceived(pdvs))
        error = self._reader.error
        if error is not None and self.state is not State.STA1 and not self._reader_failed:
            self._reader_failed = True
            self.error = str(error)
            self._pending = P.Abort(ABORT_SOURCE_PROVIDER, error.reason)
            self._pdata_open = False
            self._handle(E.INVALID_PDU)
        return self._take_events()

    def artim_expired(self) -> list[Event]:
        self._handle(E.ARTIM_EXPIRED)
        return self._take_events()

    # --- local primitives --------------------------------------------------------------------

    def send_request(self, request: P.AssociateRQ) -> None:
        """A-ASSOCIATE request (requestor). The PDU is written once the transport is open."""
        self._pending = request
        self._request = request
        self._handle(E.ASSOCIATE_RQ_PRIMITIVE, local=True)

    def send_accept(self, accept: P.AssociateAC) -> None:
        self._pending = accept
        self._handle(E.ACCEPT_PRIMITIVE, local=True)

    def send_reject(self, reject: P.AssociateRJ) -> None:
        self._pending = reject
        self._handle(E.REJECT_PRIMITIVE, local=True)

    def send_pdata(self, encoded: bytes | Iterable[bytes]) -> None:
        """P-DATA request with already encoded P-DATA-TF PDUs (see pdu.fragment)."""
        self._handle(E.PDATA_PRIMITIVE, local=True)
        if isinstance(encoded, bytes):
            self._out.append(encoded)
        else:
            self._out.extend(encoded)

    def send_release_request(self) -> None:
        self._handle(E.RELEASE_RQ_PRIMITIVE, local=True)

    def send_release_response(self) -> None:
        self._handle(E.RELEASE_RP_PRIMITIVE, local=True)

    def send_abort(self, reason: int = ABORT_REASON_NOT_SPECIFIED) -> None:
        """A-ABORT request from the local user (always allowed; a no-op when idle)."""
        if self.state in (State.STA1, State.STA2, State.STA13):
            # Nothing to abort (no association yet, or already ending): just close.
            if self.state is State.STA2:
                self.state = State.STA1
            self.should_close = True
            self.artim_running = False
            return
        self._pending = P.Abort(ABORT_SOURCE_USER, reason)
        self._handle(E.ABORT_PRIMITIVE, local=True)

    # --- the machine -------------------------------------------------------------------------

    def _take_events(self) -> list[Event]:
        events = self._events
        self._events = []
        return events

    def _handle(self, event: Evt, local: bool = False) -> None:
        try:
            action, next_state = TRANSITIONS[(self.state, event)]
        except KeyError:
            if local:
                raise LocalError(f"{event.name} is not allowed in {self.state.name}") from None
            raise AssertionError(f"no transition for {self.state.name}/{event.name}") from None
        result = getattr(self, "_" + action)()
        self._pending = None
        self.state = result if next_state is None else next_state
        if self.state is State.STA1:
            self.artim_running = False
            self.should_close = True

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _abort_pdu(self) -> P.Abort:
        """The A-ABORT to send: the local user's, a decoding error's, or 'unexpected PDU'."""
        pending = self._pending
        if isinstance(pending, P.Abort):
            return pending
        if pending is not None:
            self.error = f"unexpected {type(pending).__name__} in {self.state.name}"
        return P.Abort(ABORT_SOURCE_PROVIDER, ABORT_REASON_UNEXPECTED_PDU)

    # Association establishment
    def _ae1(self) -> None:
        pass  # the driver opens the connection and then calls connection_made()

    def _ae2(self) -> None:
        assert self._request is not None
        self._out.append(P.encode(self._request))

    def _ae3(self) -> None:
        assert isinstance(self._pending, P.AssociateAC)
        self._emit(AssociationAccepted(self._pending))

    def _ae4(self) -> None:
        assert isinstance(self._pending, P.AssociateRJ)
        self._emit(AssociationRejected(self._pending))

    def _ae5(self) -> None:
        self.artim_running = True

    def _ae6(self) -> State:
        self.artim_running = False
        assert isinstance(self._pending, P.AssociateRQ)
        self._emit(AssociationRequested(self._pending))
        return State.STA3

    def _ae7(self) -> None:
        assert isinstance(self._pending, P.AssociateAC)
        self._out.append(P.encode(self._pending))

    def _ae8(self) -> None:
        assert isinstance(self._pending, P.AssociateRJ)
        self._out.append(P.encode(self._pending))
        self.artim_running = True

    # Data transfer
    def _dt1(self) -> None:
        pass  # send_pdata appends the encoded PDUs

    def _dt2(self) -> None:
        assert isinstance(self._pending, P.PDataTF)
        self._pdata_open = True  # its PDVs follow as they arrive
        if self._pending.pdvs:
            self._emit(DataReceived(self._pending.pdvs))

    # Release
    def _ar1(self) -> None:
        self._out.append(P.encode(P.ReleaseRQ()))

    def _ar2(self) -> None:
        self._emit(ReleaseRequested())

    def _ar3(self) -> None:
        self._emit(ReleaseConfirmed())

    def _ar4(self) -> None:
        self._out.append(P.encode(P.ReleaseRP()))
        self.artim_running = True

    def _ar5(self) -> None:
        self.artim_running = False

    _ar6 = _dt2

    def _ar7(self) -> None:
        pass

    def _ar8(self) -> State:
        self._emit(ReleaseRequested())
        return State.STA9 if self.role is Role.REQUESTOR else State.STA10

    def _ar9(self) -> None:
        self._out.append(P.encode(P.ReleaseRP()))

    def _ar10(self) -> None:
        self._emit(ReleaseConfirmed())

    # Abort
    def _aa1(self) -> None:
        abort = self._abort_pdu()
        self._out.append(P.encode(abort))
        self.artim_running = True
        if abort.source != ABORT_SOURCE_USER:  # a protocol error, not the local user's abort
            self._emit(Aborted(abort.source, abort.reason, False, self.error))

    def _aa2(self) -> None:
        self.artim_running = False
        # A peer's A-ABORT before association (Sta2) is news; in Sta13 it is the expected end.
        if isinstance(self._pending, P.Abort) and self.state is State.STA2:
            self._emit(Aborted(self._pending.source, self._pending.reason, True))

    def _aa3(self) -> None:
        assert isinstance(self._pending, P.Abort)
        self._emit(Aborted(self._pending.source, self._pending.reason, True))

    def _aa4(self) -> None:
        self._emit(Aborted(ABORT_SOURCE_PROVIDER, 0, False, "connection closed by peer"))

    def _aa5(self) -> None:
        self.artim_running = False

    def _aa6(self) -> None:
        pass  # PDUs after the end are ignored

    def _aa7(self) -> None:
        self._out.append(P.encode(P.Abort(ABORT_SOURCE_PROVIDER, ABORT_REASON_UNEXPECTED_PDU)))

    def _aa8(self) -> None:
        abort = self._abort_pdu()
        self._out.append(P.encode(abort))
        self._emit(Aborted(abort.source, abort.reason, False, self.error or "unexpected PDU"))
        self.artim_running = True
