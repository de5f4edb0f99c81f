"""The probe HTTP server over real sockets: /healthz, /readyz, /metrics, nothing else."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import store_scp
from store_scp import metrics
from store_scp.web.probe import make_probe_app, start_probe_server

METRIC_NAMES = (
    "store_scp_associations_total",
    "store_scp_associations_active",
    "store_scp_objects_received_total",
    "store_scp_bytes_received_total",
    "store_scp_store_latency_seconds_bucket",
    "store_scp_tls_handshakes_total",
    "store_scp_dimse_messages_total",
)


@dataclass
class Probe:
    base: str
    ready: threading.Event


@pytest.fixture
def probe() -> Iterator[Probe]:
    """The probe app on 127.0.0.1, OS-chosen port, in an event loop of its own thread."""
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = make_probe_app(ready.is_set)
    runner, port = asyncio.run_coroutine_threadsafe(
        start_probe_server(app, "127.0.0.1", 0), loop
    ).result(timeout=10)
    try:
        assert port > 0
        yield Probe(f"http://127.0.0.1:{port}", ready)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_healthz(probe: Probe) -> None:
    status, headers, body = get(probe.base + "/healthz")
    assert (status, body) == (200, "ok\n")
    assert "Server" not in headers


def test_readyz_follows_ready(probe: Probe) -> None:
    assert get(probe.base + "/readyz")[0] == 503
    probe.ready.set()
    status, _, body = get(probe.base + "/readyz")
    assert (status, body) == (200, "ready\n")
    probe.ready.clear()
    assert get(probe.base + "/readyz")[0] == 503
    assert get(probe.base + "/healthz")[0] == 200  # liveness does not depend on readiness


def test_readyz_when_ready_raises() -> None:
    async def scenario() -> int:
        def broken() -> bool:
            raise RuntimeError("tracker not open")

        runner, port = await start_probe_server(make_probe_app(broken), "127.0.0.1", 0)
        try:
            status, _, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/readyz")
            return status
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == 503


def test_metrics(probe: Probe) -> None:
    metrics.BYTES_RECEIVED.inc(4096)
    metrics.OBJECTS_RECEIVED.labels(status=metrics.status_label(0xA700)).inc()
    metrics.STORE_LATENCY.observe(0.002)
    status, headers, body = get(probe.base + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    for name in METRIC_NAMES:
        assert name in body, name
    assert 'store_scp_objects_received_total{status="0xA700"}' in body
    assert 'store_scp_associations_total{result="refused_cidr"}' in body
    assert 'store_scp_store_latency_seconds_bucket{le="0.0005"}' in body
    assert 'store_scp_store_latency_seconds_bucket{le="10.0"}' in body
    bytes_line = next(
        line for line in body.splitlines() if line.startswith("store_scp_bytes_received_total ")
    )
    assert float(bytes_line.split()[1]) >= 4096
    assert "python_gc" not in body  # a registry of its own, not the global default


@pytest.mark.parametrize("path", ["/", "/metrics/", "/health", "/api/patients", "/readyz/x"])
def test_unknown_path_is_404(probe: Probe, path: str) -> None:
    assert get(probe.base + path)[0] == 404


def test_other_methods_refused(probe: Probe) -> None:
    assert get(probe.base + "/healthz", method="POST")[0] == 405
    assert get(probe.base + "/healthz", method="HEAD")[0] == 200


def test_multiprocess_exposition(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, /metrics sums what every process counted."""
    src = str(Path(store_scp.__file__).resolve().parent.parent)
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    metrics.clear_multiprocess_dir(tmp_path)
    count = "from store_scp import metrics; metrics.BYTES_RECEIVED.inc(100)"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True, timeout=60)
    show = (
        "import asyncio, urllib.request\n"
        "from store_scp.web.probe import make_probe_app, start_probe_server\n"
        "async def main():\n"
        "    app = make_probe_app(lambda: True)\n"
        "    runner, port = await start_probe_server(app, '127.0.0.1', 0)\n"
        "    url = f'http://127.0.0.1:{port}/metrics'\n"
        "    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())\n"
        "    await runner.cleanup()\n"
        "    print(body.decode())\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", show], env=env, check=True, timeout=60, capture_output=True
    ).stdout.decode()
    assert "store_scp_bytes_received_total 200.0" in out
