"""The DICOM listeners: accept (plain and TLS), access control, association limits, shutdown.

One asyncio task per association, no thread per association. Blocking work (durable commits,
tracker writes) goes to one bounded thread pool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .. import metrics
from ..dicom.negotiation import Policy
from ..pipeline.batching import BatchAllocator
from ..storage.base import ObjectStore
from ..tracking.base import Receipt, Tracker
from ..tracking.writer import ReceiptWriter
from .hashing import HashThread
from .session import Session

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("store_scp.listener")

# An AWS NLB drops a connection idle for 350 s: probe well before that.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 15, 4


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
        self.batches = BatchAllocator()
        self._local = settings.object_store == "local"
        self._local_fsync = bool(getattr(store, "fsync", True))
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="store-io")
        self.receipts = ReceiptWriter(tracker)
        self.hash_thread = HashThread()
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

    def track_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def record_receipt(self, receipt: Receipt) -> None:
        """After the response: the committed object is the record, so a failure here is logged
        and repaired by the start-up reconciler, never turned into a failed C-STORE."""
        self.receipts.submit(receipt)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
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
        self.receipts.close()
        self.hash_thread.close()
        log.info("stopped")
