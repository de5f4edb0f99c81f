"""The DICOM listeners: accept (plain and TLS), access control, association limits, shutdown.

One asyncio task per association, no thread per association. Blocking work (durable commits,
tracker writes) goes to one bounded thread pool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import secrets
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from .. import failpoints, metrics
from ..datastore.rules import import_rejection
from ..dicom.negotiation import Policy
from ..pipeline.batching import BatchAllocator
from ..pipeline.policy import SealPolicy
from ..storage.base import ObjectStore
from ..tracking.base import Receipt, Tracker
from ..tracking.writer import ReceiptWriter
from .hashing import FileHasher, HashJob
from .session import Session

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("store_scp.listener")

# An AWS NLB drops a connection idle for 350 s: probe well before that.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 15, 4
#: Bytes committed but not hashed yet beyond which responses wait for the hashing thread:
#: the bytes it reads back are then still in the page cache.
MAX_HASH_BACKLOG = 64 * 1024 * 1024


def _seal(tracker: Tracker, *, batch_id: str, owner: str) -> bool:
    sealed = tracker.seal_batch(batch_id, owner)
    if sealed:
        failpoints.hit("receive.sealed")
    return sealed


def _fail_at_once(tracker: Tracker, *, key: str, reason: str) -> set[str]:
    return tracker.mark_failed([key], reason)


class Server:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        tracker: Tracker,
        *,
        ssl_context: ssl.SSLContext | None = None,
        process_count: int = 1,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tracker = tracker
        self.ssl_context = ssl_context
        self.policy = Policy(
            ae_title=settings.ae_title,
            require_called_ae=settings.require_called_ae,
            allowed_calling_aes=frozenset(settings.allowed_calling_aes),
            private_sop_classes=frozenset(settings.private_sop_classes),
            max_pdu_length=settings.max_pdu_length,
        )
        self.networks = list(settings.allowed_networks)
        # Several processes share the port (SO_REUSEPORT): each enforces its share of the
        # global limit, so the total never exceeds it.
        self.max_associations = max(1, math.ceil(settings.max_associations / process_count))
        self.max_per_ae = settings.max_associations_per_ae
        # This process's identity as the owner of its open batches (a lease in the tracker).
        self.owner = f"{socket.gethostname()}-{os.getpid():x}-{secrets.token_hex(3)}"
        # How long its batches stay its own without a renewal (renewed every third of it).
        self.lease_seconds = settings.batch_lease_seconds
        self.seal_policy = SealPolicy()
        self.last_association_end = 0.0
        self.receipts = ReceiptWriter(tracker)
        self.batches = BatchAllocator(on_open=self._open_batch)
        self._local = settings.object_store == "local"
        self._local_fsync = bool(getattr(store, "fsync", True))
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="store-io")
        self.hasher = FileHasher()
        self.digests_pending = 0  # committed objects whose receipt waits for its digest
        self.sessions: set[Session] = set()
        self.active = 0
        self.per_ae: dict[str, int] = {}
        self.watchdog_interval = max(
            0.05,
            min(
                1.0,
                settings.artim_timeout / 4,
                settings.dimse_timeout / 4,
                settings.idle_timeout / 4,
            ),
        )
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.reuse_port = process_count > 1
        self.ports: dict[str, int] = {}

    # --- policy hooks used by sessions ---------------------------------------------------------

    def peer_allowed(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)

    def acquire_slot(self, calling_ae: str) -> bool:
        if self.active >= self.max_associations:
            return False
        if self.per_ae.get(calling_ae, 0) >= self.max_per_ae:
            return False
        self.active += 1
        self.per_ae[calling_ae] = self.per_ae.get(calling_ae, 0) + 1
        metrics.ASSOCIATIONS_ACTIVE.set(self.active)
        return True

    def release_slot(self, calling_ae: str) -> None:
        self.active -= 1
        self.last_association_end = time.time()
        left = self.per_ae.get(calling_ae, 1) - 1
        if left:
            self.per_ae[calling_ae] = left
        else:
            self.per_ae.pop(calling_ae, None)
        metrics.ASSOCIATIONS_ACTIVE.set(self.active)

    def commit_in_thread(self) -> bool:
        """Whether a commit should run in the thread pool rather than on the event loop.

        An upload always does. A local commit without fsync is a rename: cheaper inline than
        a hop to a thread and back. A local commit with fsync blocks for the disk's flush
        latency (a fraction of a millisecond): inline while this is the only association,
        since nobody else waits and the hop would cost about as much again; in the pool as
        soon as others are active, so that one association's flush never stalls another's.
        """
        if not self._local:
            return True
        return self._local_fsync and self.active > 1

    def tune_socket(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        except OSError:
            pass  # e.g. a socket already closed by the peer

    # --- batches -------------------------------------------------------------------------------

    def _open_batch(self, batch_id: str) -> None:
        self.receipts.submit_call(
            lambda t: t.open_batch(batch_id, f"{batch_id}/", self.owner, self.lease_seconds)
        )

    def _renewed(self, renewed: list[str]) -> None:
        """In the writer thread: a batch sealed by someone else is closed here too."""
        if self.batches.current.batch_id not in renewed and self.batches.current.files:
            self._loop.call_soon_threadsafe(self.batches.roll)

    async def keep_batches(self) -> None:
        """Seal this process's batches by the seal policy, and keep its lease alive."""
        last_renewal = 0.0
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            batch = self.batches.current
            reason = self.seal_policy.seal_reason(
                files=batch.files,
                size=batch.bytes,
                age=now - batch.opened_at,
                idle=now - max(batch.last_object_at, self.last_association_end),
                writers=self.active,
                backlog=0,
            )
            if reason:
                log.info("batch closing", extra={"batch_id": batch.batch_id, "why": reason})
                self.batches.roll()
            self._seal_closed()
            if now - last_renewal > self.lease_seconds / 3:
                last_renewal = now
                self.receipts.submit_call(lambda t: self._renewed(t.renew_lease(self.owner)))

    def _seal_closed(self) -> None:
        """Seal (in order after their receipts) the closed batches nothing is committing into."""
        for batch_id in self.batches.sealable():
            self.receipts.submit_call(partial(_seal, batch_id=batch_id, owner=self.owner))

    def track_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def hash_backlog_full(self) -> bool:
        return self.hasher.backlog > MAX_HASH_BACKLOG

    async def hash_backlog_room(self) -> None:
        """Wait while the hashing thread is far behind (responses then wait too, which slows
        the senders down to the hashing speed; only reached under overload)."""
        while self.hash_backlog_full():
            await asyncio.sleep(0.002)

    def record_when_hashed(self, job: HashJob, receipt: Receipt, batch_id: str) -> None:
        """record_receipt once the object's digest is known."""
        self.digests_pending += 1

        def hashed(digest: str) -> None:
            self.digests_pending -= 1
            self.record_receipt(replace(receipt, sha256=digest), batch_id)

        self.hasher.when_done(job, asyncio.get_running_loop(), hashed)

    def record_receipt(self, receipt: Receipt, batch_id: str) -> None:
        """After the response: the committed object is the record, so a failure here is logged
        and repaired by the start-up reconciler, never turned into a failed C-STORE. The
        object's batch may be sealed once its receipt is queued."""
        self.receipts.submit(receipt)
        self.batches.done(batch_id)
        why = import_rejection(receipt.sop_class_uid, receipt.transfer_syntax_uid)
        if why:
            # Stored all the same (nothing is lost); no job will ever take it.
            log.warning(
                "stored object is not importable into HealthImaging",
                extra={"key": receipt.key, "why": why},
            )
            reason = f"not importable: {why}"
            self.receipts.submit_call(partial(_fail_at_once, key=receipt.key, reason=reason))

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.track_task(loop.create_task(self.keep_batches()))
        s = self.settings
        if s.plain_enabled:
            server = await loop.create_server(
                lambda: Session(self, tls=False),
                host=s.bind,
                port=s.port,
                reuse_port=self.reuse_port or None,
                backlog=512,
            )
            self._servers.append(server)
            self.ports["plain"] = server.sockets[0].getsockname()[1]
        if self.ssl_context is not None:
            server = await loop.create_server(
                lambda: Session(self, tls=True),
                host=s.bind,
                port=s.tls_port,
                ssl=self.ssl_context,
                ssl_handshake_timeout=s.tls_handshake_timeout,
                reuse_port=self.reuse_port or None,
                backlog=512,
            )
            self._servers.append(server)
            self.ports["tls"] = server.sockets[0].getsockname()[1]
        log.info(
            "listening",
            extra={"ae_title": s.ae_title, "bind": s.bind, "ports": self.ports},
        )

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let associations finish for `grace` seconds, then abort them."""
        for server in self._servers:
            server.close()
        # Logged once the listening sockets are closed: a connection after this is refused.
        log.info("shutting down", extra={"grace_s": grace})
        for task in list(self._tasks):
            if task.get_coro().__name__ == "keep_batches":  # type: ignore[union-attr]
                task.cancel()
        deadline = asyncio.get_running_loop().time() + grace
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort("shutdown")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self.executor.shutdown(wait=True)
        # Receipts still waiting for their digest (the hashing thread is at most
        # MAX_HASH_BACKLOG behind: a few hundredths of a second of hashing).
        deadline = asyncio.get_running_loop().time() + max(grace, 10.0)
        while self.digests_pending and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        if self.digests_pending:
            log.error(
                "receipts left to the start-up reconciler: digests not ready at shutdown",
                extra={"objects": self.digests_pending},
            )
        # What was received is sealed for import; the next process opens new batches.
        self.batches.roll()
        self._seal_closed()
        self.receipts.close()
        self.hasher.close()
        log.info("stopped")
