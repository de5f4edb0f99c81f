"""The probe HTTP server: ``/healthz``, ``/readyz`` and ``/metrics``, nothing else.

Load balancers and orchestrators health-check this port, not the DICOM port. It serves no
patient data: liveness, readiness and the Prometheus exposition of :mod:`store_scp.metrics`.

- ``GET /healthz``: 200 ``ok`` while the process's event loop answers.
- ``GET /readyz``: 200 ``ready`` when ``ready()`` is true, else 503 ``not ready`` (a ``ready``
  that raises counts as not ready).
- ``GET /metrics``: Prometheus text format (aggregated over processes in multiprocess mode).

``HEAD`` is answered for each; any other path is 404, any other method 405.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from store_scp import metrics

__all__ = ["make_probe_app", "start_probe_server"]

_log = logging.getLogger(__name__)

_READY_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")
_NO_CACHE = {"Cache-Control": "no-store"}


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers=_NO_CACHE)


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[_READY_KEY]
    try:
        is_ready = bool(ready())
    except Exception:
        _log.exception("readiness check failed")
        is_ready = False
    if is_ready:
        return web.Response(text="ready\n", headers=_NO_CACHE)
    return web.Response(status=503, text="not ready\n", headers=_NO_CACHE)


async def _metrics(request: web.Request) -> web.Response:
    if metrics.multiprocess_dir():
        # Reads one file per process: keep that off the event loop that serves DICOM.
        body, content_type = await asyncio.to_thread(metrics.exposition)
    else:
        body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type, **_NO_CACHE})


async def _hide_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall("Server", None)


def make_probe_app(ready: Callable[[], bool]) -> web.Application:
    """The probe application; ``ready()`` decides the answer of ``/readyz``."""
    app = web.Application()
    app[_READY_KEY] = ready
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.on_response_prepare.append(_hide_server_header)
    return app


async def start_probe_server(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host``:``port``; return the runner and the bound port.

    ``port`` 0 lets the OS choose. ``reuse_port`` lets several worker processes share the port
    (SO_REUSEPORT). Stop with ``await runner.cleanup()``. No access log: probes arrive every few
    seconds and would drown the logs that matter.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        addresses = runner.addresses
        bound = int(addresses[0][1]) if addresses else port
    except BaseException:
        await runner.cleanup()
        raise
    return runner, bound
