"""One association: an asyncio Protocol that drives the sans-IO Upper Layer core.

data_received -> Association.receive_data -> events, handled in order. A C-STORE's dataset
fragments are written to the staging file as they arrive; the durable commit runs in a worker
thread while reading is paused, and the C-STORE-RSP is written only after it returned.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .. import failpoints, metrics
from ..dicom import association as A
from ..dicom import dimse
from ..dicom import pdu as P
from ..dicom.negotiation import (
    REJECT_CALLING_AE,
    REJECT_LOCAL_LIMIT,
    REJECT_REASONS,
    Outcome,
    negotiate,
)
from ..storage.base import StorageError
from ..tracking.base import Receipt
from .store import StoredInstance, StoreFailure, StoreOperation, drop_staging, open_staging
from .tls import peer_common_name

if TYPE_CHECKING:
    from .listener import Server

log = logging.getLogger("store_scp.session")

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_TLS_RECORD_HANDSHAKE = 0x16


#: The receive buffer of an association, reused for every read: large reads mean few system
#: calls, reuse means no fresh pages (page faults cost more than the copy they would replace).
#: Dataset bytes leave it for the staging file within the read that brought them.
READ_BUFFER_SIZE = 256 * 1024


class Session(asyncio.BufferedProtocol):
    def __init__(self, server: Server, *, tls: bool) -> None:
        self.server = server
        self.settings = server.settings
        self.tls = tls
        self.assoc_id = uuid.uuid4().hex[:12]
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None
        self.peer = ""
        self.calling_ae = ""
        self.called_ae = ""
        self.assoc = A.Association(A.Role.ACCEPTOR, max_pdata_length=self.settings.max_pdu_length)
        self.contexts: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu = 0
        self.established = False
        self.counted = False  # holds a slot in the association limits
        self.started = time.monotonic()
        self.last_rx = self.started
        self.artim_since: float | None = None
        self.received_any = False
        self.closed = False
        self.stats = {"stored": 0, "failed": 0, "bytes": 0}
        # Incoming message state
        self._command_buf: list[bytes | memoryview] = []
        self._command_ctx = -1
        self._command: dimse.Command | None = None
        self._op: StoreOperation | None = None
        self._discarding = False  # reading a dataset we already answered or refused
        # Flow: events waiting while a commit is in flight, and bytes received meanwhile
        self._busy = False
        self._events: collections.deque[A.Event] = collections.deque()
        self._backlog: list[bytes] = []  # bytes read while a commit was in flight
        self._watchdog: asyncio.TimerHandle | None = None
        self._rbuf = memoryview(bytearray(READ_BUFFER_SIZE))
        # A staging file opened while the peer prepares its next object, off the latency path
        self._spare: tuple[int, Path] | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its interface.
        self.transport = tr = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if not peername:
            # Reset before we could see it (a load-balancer probe, a port scan): not news.
            self.closed = True
            tr.abort()
            return
        self.peer = f"{peername[0]}:{peername[1]}"
        if not self.server.peer_allowed(peername[0]):
            # DICOM has no rejection reason for an address: close before any PDU.
            metrics.ASSOCIATIONS.labels(result="refused_cidr").inc()
            log.warning(
                "connection refused: peer outside the allowed networks",
                extra={"peer": self.peer, "assoc_id": self.assoc_id},
            )
            self.closed = True
            tr.abort()
            return
        raw_sock = transport.get_extra_info("socket")
        if raw_sock is not None:
            self.server.tune_socket(raw_sock)
            # uvloop hands out a pseudo-socket whose every call costs an extra syscall; a
            # duplicate of the descriptor is a real socket (ours to close) for TCP_QUICKACK.
            try:
                self.sock = socket.socket(fileno=os.dup(raw_sock.fileno()))
            except OSError:
                self.sock = None
        self.server.sessions.add(self)
        if self.tls:
            metrics.TLS_HANDSHAKES.labels(result="ok").inc()
        self.assoc.connection_made()
        self._sync_artim()
        self._arm_watchdog()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._rbuf[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """`data` may be a view of the reusable read buffer: everything that must outlive
        this call is copied (command fragments, backlog); dataset bytes go to the file now."""
        if self.closed:
            return
        if _TCP_QUICKACK is not None and self.sock is not None:
            # A sender that leaves Nagle on holds its next small segment until our ACK; a
            # delayed ACK would stall every object ~40 ms. The kernel leaves quick-ACK mode on
            # its own, so it is set again after every read.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        self.last_rx = time.monotonic()
        if not self.received_any:
            self.received_any = True
            if not self.tls and data[0] == _TLS_RECORD_HANDSHAKE and data[1:2] == b"\x03":
                log.warning(
                    "TLS ClientHello on the plain DICOM port: the peer expects DICOM-TLS",
                    extra={"peer": self.peer, "assoc_id": self.assoc_id},
                )
                self._close(abort=True)
                return
        if self._busy:
            self._backlog.append(bytes(data))
            return
        self._feed(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not self.closed:
            self.closed = True
            if self.assoc.state not in (A.State.STA1,):
                events = self.assoc.receive_data(b"")
                for event in events:
                    if isinstance(event, A.Aborted):
                        self._on_aborted(event)
        self._drop_op()
        self.server.sessions.discard(self)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.counted:
            self.server.release_slot(self.calling_ae)
            self.counted = False
        if self.established:
            log.info(
                "association ended",
                extra={
                    "assoc_id": self.assoc_id,
                    "peer": self.peer,
                    "calling_ae": self.calling_ae,
                    "stored": self.stats["stored"],
                    "failed": self.stats["failed"],
                    "bytes": self.stats["bytes"],
                    "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
                },
            )
        elif not self.received_any:
            # A load-balancer health check or port probe: not an error.
            log.debug("connection closed before any PDU", extra={"peer": self.peer})

    # --- plumbing ----------------------------------------------------------------------------

    def _feed(self, data: bytes | memoryview) -> None:
        events = self.assoc.receive_data(data)
        self._flush()
        self._events.extend(events)
        self._drain()

    def _flush(self) -> None:
        out = self.assoc.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)
        self._sync_artim()
        if self.assoc.should_close:
            self._close()

    def _sync_artim(self) -> None:
        if self.assoc.artim_running:
            if self.artim_since is None:
                self.artim_since = time.monotonic()
        else:
            self.artim_since = None

    def _close(self, abort: bool = False) -> None:
        if self.closed or self.transport is None:
            return
        self.closed = True
        self._drop_op()
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def abort(self, why: str) -> None:
        """Local A-ABORT (shutdown, timeouts)."""
        if self.closed:
            return
        log.warning(
            "association aborted", extra={"assoc_id": self.assoc_id, "peer": self.peer, "why": why}
        )
        metrics.ASSOCIATIONS.labels(result="aborted").inc()
        self.assoc.send_abort()
        self._flush()
        self._close()

    def _drain(self) -> None:
        while self._events and not self._busy:
            event = self._events.popleft()
            # Once closed only an abort still matters: it is logged.
            if not self.closed or isinstance(event, A.Aborted):
                self._dispatch(event)
        while self._backlog and not self._busy and not self.closed:
            self._feed(self._backlog.pop(0))

    def _dispatch(self, event: A.Event) -> None:
        if isinstance(event, A.DataReceived):
            for i, pdv in enumerate(event.pdvs):
                if self._busy or self.closed:
                    # A commit started mid-read: keep the remaining PDVs, in order. Reading
                    # is paused, so the read buffer they point into is not reused meanwhile.
                    self._events.appendleft(A.DataReceived(event.pdvs[i:]))
                    return
                self._on_pdv(pdv)
        elif isinstance(event, A.AssociationRequested):
            # Bytes after the request may already have aborted the association (Sta13).
            if self.assoc.state is A.State.STA3:
                self._on_request(event.request)
        elif isinstance(event, A.ReleaseRequested):
            self._drop_op()
            if self.assoc.state is A.State.STA8:
                self.assoc.send_release_response()
                self._flush()
        elif isinstance(event, A.Aborted):
            self._on_aborted(event)
            self._close()

    # --- association ---------------------------------------------------------------------------

    def _on_request(self, rq: P.AssociateRQ) -> None:
        self.calling_ae, self.called_ae = rq.calling_ae, rq.called_ae
        outcome = negotiate(rq, self.server.policy)
        if outcome.accept is not None and not self._certificate_allows(rq.calling_ae):
            outcome = Outcome(
                reject=P.AssociateRJ(*REJECT_CALLING_AE),
                reason="calling AE title not allowed for this client certificate",
            )
        if outcome.accept is not None and not self.server.acquire_slot(rq.calling_ae):
            outcome.accept = None
            outcome.reject = P.AssociateRJ(*REJECT_LOCAL_LIMIT)
            outcome.reason = REJECT_REASONS[REJECT_LOCAL_LIMIT]
        if outcome.accept is None:
            assert outcome.reject is not None
            metrics.ASSOCIATIONS.labels(result="rejected").inc()
            log.warning(
                "association rejected",
                extra={
                    "assoc_id": self.assoc_id,
                    "peer": self.peer,
                    "calling_ae": rq.calling_ae,
                    "called_ae": rq.called_ae,
                    "why": outcome.reason,
                    "result": outcome.reject.result,
                    "source": outcome.reject.source,
                    "reason": outcome.reject.reason,
                },
            )
            self.assoc.send_reject(outcome.reject)
            self._flush()
            return
        self.counted = True
        self.established = True
        self.contexts = outcome.contexts
        self.peer_max_pdu = outcome.peer_max_pdu
        metrics.ASSOCIATIONS.labels(result="accepted").inc()
        log.info(
            "association accepted",
            extra={
                "assoc_id": self.assoc_id,
                "peer": self.peer,
                "calling_ae": rq.calling_ae,
                "called_ae": rq.called_ae,
                "tls": self.tls,
                "contexts_proposed": len(rq.presentation_contexts),
                "contexts_accepted": len(outcome.contexts),
                "peer_max_pdu": outcome.peer_max_pdu,
                "implementation": rq.user_info.implementation_class_uid,
            },
        )
        self.assoc.send_accept(outcome.accept)
        self._flush()

    def _certificate_allows(self, calling_ae: str) -> bool:
        """With mutual TLS and a certificate map, a client certificate (by subject CN) may
        only use the calling AE titles mapped to it."""
        cert_map = self.settings.tls_cert_ae_map
        if not self.tls or not cert_map or self.transport is None:
            return True
        cn = peer_common_name(self.transport.get_extra_info("peercert"))
        return calling_ae in cert_map.get(cn, ())

    def _on_aborted(self, event: A.Aborted) -> None:
        self._drop_op()
        if event.by_peer:
            log.info(
                "association aborted by peer",
                extra={"assoc_id": self.assoc_id, "peer": self.peer, "source": event.source},
            )
        else:
            metrics.ASSOCIATIONS.labels(result="aborted").inc()
            log.warning(
                "association aborted: protocol error",
                extra={
                    "assoc_id": self.assoc_id,
                    "peer": self.peer,
                    "reason": event.reason,
                    "why": event.detail,
                },
            )

    def _protocol_abort(self, why: str) -> None:
        """A DIMSE-level violation: A-ABORT as the service provider would."""
        self.assoc.error = why
        self._on_aborted(A.Aborted(A.ABORT_SOURCE_PROVIDER, 0, False, why))
        self.assoc.send_abort()
        self._flush()
        self._close()

    # --- DIMSE -------------------------------------------------------------------------------

    def _on_pdv(self, pdv: P.PDV) -> None:
        if pdv.context_id not in self.contexts:
            self._protocol_abort(f"PDV on presentation context {pdv.context_id} not accepted")
            return
        if pdv.is_command:
            if self._op is not None or self._discarding:
                self._protocol_abort("command fragment while a data set was expected")
                return
            if self._command_buf and pdv.context_id != self._command_ctx:
                self._protocol_abort("command fragments on different presentation contexts")
                return
            self._command_ctx = pdv.context_id
            self._command_buf.append(bytes(pdv.data))
            if sum(len(b) for b in self._command_buf) > dimse.MAX_COMMAND_LENGTH:
                self._protocol_abort("command set too long")
                return
            if pdv.is_last:
                raw = b"".join(self._command_buf)
                self._command_buf.clear()
                try:
                    command = dimse.decode_command(raw)
                except dimse.DimseError as exc:
                    self._protocol_abort(f"undecodable command set: {exc}")
                    return
                self._on_command(pdv.context_id, command)
            return
        # A data set fragment
        if self._command is None or pdv.context_id != self._command_ctx:
            self._protocol_abort("data set fragment without its command")
            return
        if self._op is not None:
            self._op.feed(pdv.data)
        if pdv.is_last:
            if self._op is not None:
                op, self._op = self._op, None
                self._finish_store(op)
            else:
                self._command = None
                self._discarding = False

    def _on_command(self, ctx_id: int, command: dimse.Command) -> None:
        field = command.command_field
        metrics.dimse_messages(dimse.COMMAND_NAMES.get(field, f"0x{field:04X}")).inc()
        if field == dimse.C_ECHO_RQ:
            self._respond(ctx_id, dimse.c_echo_rsp(command))
            return
        if field == dimse.C_CANCEL_RQ:
            return  # nothing of ours can be cancelled
        if field == dimse.C_STORE_RQ:
            self._start_store(ctx_id, command)
            return
        self._respond(
            ctx_id,
            dimse.failure_rsp(command, dimse.UNRECOGNIZED_OPERATION, "operation not supported"),
        )
        if command.has_dataset:
            self._command, self._discarding = command, True

    def _respond(self, ctx_id: int, command_bytes: bytes) -> None:
        if self.closed:
            return
        try:
            self.assoc.send_pdata(P.fragment(ctx_id, command_bytes, True, self.peer_max_pdu))
        except A.LocalError:
            return  # the association ended meanwhile
        self._flush()

    def _start_store(self, ctx_id: int, command: dimse.Command) -> None:
        abstract, syntax = self.contexts[ctx_id]
        sop_class = command.get(dimse.AFFECTED_SOP_CLASS_UID, "")
        sop_instance = command.get(dimse.AFFECTED_SOP_INSTANCE_UID, "")
        refuse = None
        if sop_class != abstract:
            refuse = StoreFailure(
                dimse.REFUSED_SOP_CLASS_NOT_SUPPORTED, "SOP class differs from the context's"
            )
        if not command.has_dataset:
            self._answer_store(
                ctx_id, command, StoreFailure(dimse.CANNOT_UNDERSTAND, "C-STORE without data set")
            )
            return
        self._command = command
        spare, self._spare = self._spare, None
        self._op = StoreOperation(
            staging=spare,
            staging_dir=self.server.store.staging_dir,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=syntax,
            calling_ae=self.calling_ae,
            max_object_size=self.settings.max_object_size,
            refuse=refuse,
            early_writeback=self.settings.fsync,
            hasher=self.server.hasher,
        )

    def _finish_store(self, op: StoreOperation) -> None:
        command = self._command
        assert command is not None
        ctx_id = self._command_ctx
        self._command = None
        try:
            stored = op.finish(self.server.batches.assign)
        except StoreFailure as failure:
            op.discard()
            self._answer_store(ctx_id, command, failure, op=op)
            return
        in_thread = self.server.commit_in_thread()
        if not in_thread and not self.server.hash_backlog_full():
            self._commit_done(ctx_id, command, op, stored, self._commit_sync(stored))
            return
        # Durable commit in a worker thread (and room made in the hashing backlog, if it is
        # full); reading pauses so the peer cannot run ahead.
        self._busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(
            self._commit(ctx_id, command, op, stored, in_thread)
        )
        self.server.track_task(task)

    def _commit_sync(self, stored: StoredInstance) -> StoreFailure | None:
        """Commit (in whatever thread calls it); the one place commit errors become statuses."""
        store = self.server.store
        t0 = time.monotonic()
        try:
            store.commit(stored.staging, stored.key)
            failpoints.hit("receive.committed")
            return None
        except StorageError as exc:
            log.error(
                "storage failure",
                extra={"assoc_id": self.assoc_id, "key": stored.key, "why": str(exc)},
            )
            store.discard(stored.staging)
            return StoreFailure(dimse.OUT_OF_RESOURCES, "storage failure")
        except Exception:  # never answer success for an object we could not commit
            log.exception("unexpected failure during commit", extra={"assoc_id": self.assoc_id})
            store.discard(stored.staging)
            return StoreFailure(dimse.OUT_OF_RESOURCES, "internal error while storing")
        finally:
            metrics.STORE_LATENCY.observe(time.monotonic() - t0)

    async def _commit(
        self,
        ctx_id: int,
        command: dimse.Command,
        op: StoreOperation,
        stored: StoredInstance,
        in_thread: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        if in_thread:
            failure = await loop.run_in_executor(self.server.executor, self._commit_sync, stored)
        else:
            failure = self._commit_sync(stored)
        await self.server.hash_backlog_room()
        self._commit_done(ctx_id, command, op, stored, failure)
        self._busy = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self._drain()

    def _commit_done(
        self,
        ctx_id: int,
        command: dimse.Command,
        op: StoreOperation,
        stored: StoredInstance,
        failure: StoreFailure | None,
    ) -> None:
        self._answer_store(ctx_id, command, failure, op=op, stored=stored)
        op.close_file()
        job = stored.digest_job
        if failure is not None:
            if job is not None:
                self.server.hasher.cancel(job)
            self.server.batches.done(stored.batch_id)
        else:
            failpoints.hit("receive.answered")
            if job is None:
                self.server.record_receipt(self._receipt(stored), stored.batch_id)
            else:
                self.server.record_when_hashed(job, self._receipt(stored), stored.batch_id)
        if self._spare is None and not self.closed:
            try:
                self._spare = open_staging(self.server.store.staging_dir)
            except OSError:
                self._spare = None  # the next store opens its own and reports the error

    def _receipt(self, stored: StoredInstance) -> Receipt:
        return Receipt(
            key=stored.key,
            batch_id=stored.batch_id,
            sop_instance_uid=stored.sop_instance_uid,
            sop_class_uid=stored.sop_class_uid,
            study_instance_uid=stored.study_instance_uid,
            series_instance_uid=stored.series_instance_uid,
            transfer_syntax_uid=stored.transfer_syntax_uid,
            size=stored.size,
            sha256=stored.sha256,
            calling_ae=self.calling_ae,
            peer=self.peer,
            received_at=time.time(),
        )

    def _answer_store(
        self,
        ctx_id: int,
        command: dimse.Command,
        failure: StoreFailure | None,
        *,
        op: StoreOperation | None = None,
        stored: StoredInstance | None = None,
    ) -> None:
        status = dimse.SUCCESS if failure is None else failure.status
        comment = failure.comment if failure else ""
        self._respond(ctx_id, dimse.c_store_rsp(command, status, comment))
        size = stored.size if stored else (op.received if op else 0)
        fields: dict[str, Any] = {
            "assoc_id": self.assoc_id,
            "calling_ae": self.calling_ae,
            "sop_class_uid": command.get(dimse.AFFECTED_SOP_CLASS_UID, ""),
            "sop_instance_uid": command.get(dimse.AFFECTED_SOP_INSTANCE_UID, ""),
            "status": f"0x{status:04X}",
            "size": size,
        }
        if op is not None:
            fields["duration_ms"] = round((time.monotonic() - op.started) * 1000, 2)
        metrics.objects_received(f"0x{status:04X}").inc()
        if failure is None and stored is not None:
            self.stats["stored"] += 1
            self.stats["bytes"] += stored.size
            metrics.BYTES_RECEIVED.inc(stored.size)
            fields["key"] = stored.key
            fields["transfer_syntax_uid"] = stored.transfer_syntax_uid
            log.info("stored", extra=fields)
            if stored.stripped_meta:
                log.warning(
                    "data set carried File Meta (0002) elements; they were removed",
                    extra={
                        "assoc_id": self.assoc_id,
                        "key": stored.key,
                        "bytes": stored.stripped_meta,
                    },
                )
            if stored.header.over_limits:
                log.warning(
                    "element values over HealthImaging limits; stored, import may fail",
                    extra={
                        "assoc_id": self.assoc_id,
                        "key": stored.key,
                        "lengths": stored.header.over_limits,
                    },
                )
        else:
            self.stats["failed"] += 1
            fields["why"] = failure.comment if failure else ""
            log.warning("store refused", extra=fields)

    def _drop_op(self) -> None:
        """The association is ending: drop the store in progress and the spare staging file,
        before a release response or close tells the peer that we are done."""
        if self._spare is not None:
            drop_staging(*self._spare)
            self._spare = None
        if self._op is not None:
            self._op.discard()
            self._op = None
        self._command = None
        self._discarding = False
        self._command_buf.clear()

    # --- timers ------------------------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.server.watchdog_interval, self._check_timers)

    def _check_timers(self) -> None:
        self._watchdog = None
        if self.closed:
            return
        s = self.settings
        now = time.monotonic()
        if self.artim_since is not None and now - self.artim_since > s.artim_timeout:
            self.assoc.artim_expired()
            if not self.received_any or not self.established:
                log.info("ARTIM timer expired", extra={"peer": self.peer})
            self._flush()
            self._close()
            return
        if not self._busy:
            mid_message = self._op is not None or self._command_buf or self._discarding
            if mid_message and now - self.last_rx > s.dimse_timeout:
                self.abort("DIMSE timeout")
                return
            if now - self.last_rx > s.idle_timeout:
                self.abort("network idle timeout")
                return
        if now - self.started > s.max_association_lifetime:
            self.abort("maximum association lifetime reached")
            return
        self._arm_watchdog()
