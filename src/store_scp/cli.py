"""The `store-scp` command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__


def _settings(config: Path | None, **overrides: Any) -> Any:
    from .config import ConfigError, load_settings

    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        click.echo(f"store-scp: invalid configuration:\n{exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="store-scp")
def main() -> None:
    """A DICOM Store SCP: receives objects and keeps each one durably for AWS HealthImaging.

    Every setting can also come from a STORE_SCP_* environment variable or a TOML file
    (--config or STORE_SCP_CONFIG); flags win over both.
    """


@main.command()
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), help="TOML file.")
@click.option("--port", type=int, help="Plain DICOM port [env STORE_SCP_PORT; 11112].")
@click.option("--bind", help="Address to listen on [env STORE_SCP_BIND; 0.0.0.0].")
@click.option("--ae-title", help="Our AE title [env STORE_SCP_AE_TITLE; STORE_SCP].")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the embedded default keeps everything [env STORE_SCP_DATA_DIR; ./store-scp-data].",
)
@click.option(
    "--http-port",
    type=int,
    help="Probe port for /healthz, /readyz, /metrics; -1 disables [env STORE_SCP_HTTP_PORT; 8080].",
)
@click.option("--http-bind", help="Probe address [env STORE_SCP_HTTP_BIND; 0.0.0.0].")
@click.option("--tls-port", type=int, help="DICOM-TLS port [env STORE_SCP_TLS_PORT; 2762].")
@click.option("--tls-cert", type=click.Path(path_type=Path), help="PEM certificate; enables TLS.")
@click.option("--tls-key", type=click.Path(path_type=Path), help="PEM private key.")
@click.option("--tls-ca", type=click.Path(path_type=Path), help="CA bundle: require client certs.")
@click.option(
    "--processes", type=int, help="Receiver processes sharing the ports [env STORE_SCP_PROCESSES]."
)
@click.option(
    "--fsync/--no-fsync",
    default=None,
    help="Durable commits (default). --no-fsync is UNSAFE, for benchmarks only.",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path, dir_okay=False),
    hidden=True,
    help="Write the bound ports here once listening (for tests and tooling).",
)
def serve(config: Path | None, ready_file: Path | None, **flags: Any) -> None:
    """Receive DICOM objects (C-ECHO, C-STORE) and keep each one durably.

    Runs on the embedded default with no cloud account: objects under DATA_DIR/objects,
    tracking in DATA_DIR/tracker.sqlite3. Stop with SIGTERM or Ctrl-C: listeners close,
    associations get STORE_SCP_SHUTDOWN_GRACE seconds to finish, then are aborted.
    """
    settings = _settings(config, **flags)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    if settings.processes > 1:
        _serve_processes(settings, ready_file)
        return
    _run_one(settings, process_count=1, index=0, ready_file=ready_file)


def _run_one(settings: Any, *, process_count: int, index: int, ready_file: Path | None) -> None:
    from .app import install_event_loop_policy, serve
    from .logs import setup_logging

    setup_logging(settings.log_level, log_phi=settings.log_phi)
    install_event_loop_policy()
    try:
        asyncio.run(
            serve(
                settings,
                process_count=process_count,
                run_reconciler=index == 0,
                run_probe=index == 0,
                ready_file=ready_file if index == 0 else None,
            )
        )
    except OSError as exc:
        click.echo(f"store-scp: cannot start: {exc}", err=True)
        sys.exit(1)


def _serve_processes(settings: Any, ready_file: Path | None) -> None:
    """Pre-fork N receivers on the same ports (SO_REUSEPORT); restart any that dies."""
    metrics_dir = Path(settings.data_dir) / ".metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for leftover in metrics_dir.glob("*.db"):
        leftover.unlink()
    # Must be set before prometheus_client is imported by any receiver.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    n = settings.processes
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                _run_one(settings, process_count=n, index=index, ready_file=ready_file)
            finally:
                os._exit(0)
        children[pid] = index

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(n):
        spawn(i)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        from .metrics import mark_process_dead

        mark_process_dead(pid)
        if not stopping:
            click.echo(f"store-scp: receiver {index} exited ({status}); restarting", err=True)
            time.sleep(0.5)
            if not stopping:  # SIGTERM may have come during the pause
                spawn(index)


def _register_client_commands() -> None:
    try:
        from .cli_scu import echo_command, send_command
    except ImportError:  # pragma: no cover - during development only
        return
    main.add_command(echo_command, "echo")
    main.add_command(send_command, "send")


_register_client_commands()

if __name__ == "__main__":
    main()
