"""`store-scp echo` and `store-scp send`: a C-ECHO and C-STORE requestor over our own protocol
core (see `scu.py`). Output names files, UIDs, statuses and timings, never patient data."""

from __future__ import annotations

import contextlib
import json
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from store_scp import scu
from store_scp.dicom import dimse, uids

DEFAULT_CALLING_AE = "STORE_SCU"
DEFAULT_CALLED_AE = "STORE_SCP"
DEFAULT_TIMEOUT = 30.0

F = TypeVar("F", bound=Callable[..., Any])


def parse_address(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` -> (host, port). Raises ValueError with a clear message."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"empty IPv6 address in {value!r}")
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:11112, got {value!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


class AddressType(click.ParamType):
    name = "HOST:PORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_address(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class AETitleType(click.ParamType):
    name = "AE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not 0 < len(text.strip()) <= 16 or len(text) > 16:
            self.fail(f"an AE title has 1 to 16 characters, got {text!r}", param, ctx)
        if not text.isascii() or "\\" in text or any(ord(c) < 0x20 for c in text):
            self.fail(f"an AE title is printable ASCII without backslash, got {text!r}", param, ctx)
        return text


ADDRESS = AddressType()
AE_TITLE = AETitleType()


def _common_options(func: F) -> F:
    options = [
        click.argument("address", type=ADDRESS, metavar="HOST:PORT"),
        click.option(
            "--aet",
            "calling_ae",
            type=AE_TITLE,
            default=DEFAULT_CALLING_AE,
            show_default=True,
            help="Our (calling) AE title.",
        ),
        click.option(
            "--aec",
            "called_ae",
            type=AE_TITLE,
            default=DEFAULT_CALLED_AE,
            show_default=True,
            help="The peer's (called) AE title.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            help="Seconds to wait for the connection and for each answer of the peer.",
        ),
        click.option("--tls", is_flag=True, help="Use TLS (TLS 1.2 or later)."),
        click.option(
            "--tls-ca",
            type=click.Path(exists=True, dir_okay=False),
            help="CA bundle (PEM) that verifies the peer's certificate "
            "(default: the system's). Implies --tls.",
        ),
        click.option(
            "--tls-cert",
            type=click.Path(exists=True, dir_okay=False),
            help="Our client certificate (PEM) for mutual TLS. Implies --tls.",
        ),
        click.option(
            "--tls-key",
            type=click.Path(exists=True, dir_okay=False),
            help="Private key (PEM) of --tls-cert, if not in the same file.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_ssl_context(
    tls: bool, ca: str | None, cert: str | None, key: str | None
) -> ssl.SSLContext | None:
    """The client TLS context the options ask for, or None for plain TCP."""
    if not (tls or ca or cert or key):
        return None
    if key and not cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the TLS files: {exc}") from exc
    return context


def _fail(message: str) -> click.exceptions.Exit:
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(1)


def _format_peer(host: str, port: int, called_ae: str) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{where} ({called_ae})"


# ---------------------------------------------------------------------------------------------
# echo


@click.command("echo")
@_common_options
def echo_command(
    address: tuple[str, int],
    calling_ae: str,
    called_ae: str,
    timeout: float,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Send a C-ECHO to HOST:PORT and print its status and round-trip time.

    Exits 0 when the peer answers Success, 1 otherwise.
    """
    host, port = address
    context = build_ssl_context(tls, tls_ca, tls_cert, tls_key)
    peer = _format_peer(host, port, called_ae)
    requestor = scu.Requestor()
    try:
        start = time.perf_counter()
        requestor.connect(
            host,
            port,
            calling_ae,
            called_ae,
            [(uids.VERIFICATION_SOP_CLASS, [uids.IMPLICIT_VR_LITTLE_ENDIAN])],
            timeout=timeout,
            ssl_context=context,
        )
        associated = time.perf_counter()
        status = requestor.echo()
        answered = time.perf_counter()
        requestor.release()
    except scu.SCUError as exc:
        requestor.abort()
        raise _fail(f"C-ECHO to {peer}: {exc}") from None
    except BaseException:
        requestor.abort()
        raise
    association_ms = (associated - start) * 1000
    round_trip_ms = (answered - associated) * 1000
    line = (
        f"C-ECHO {peer}: {scu.status_text(status)}, round trip {round_trip_ms:.2f} ms "
        f"(association {association_ms:.2f} ms{', TLS' if context else ''})"
    )
    if status != dimse.SUCCESS:
        raise _fail(line)
    click.echo(line)


# ---------------------------------------------------------------------------------------------
# send


def _progress(total: int, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext(None)
    return click.progressbar(length=total, label="Sending", file=sys.stderr, show_pos=True)


@click.command("send")
@_common_options
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--recursive",
    "-r",
    is_flag=True,
    help="Walk directories (without it, directories are skipped).",
)
@click.option(
    "--max-pdu",
    type=click.IntRange(4096, 64 * 1024 * 1024),
    default=scu.DEFAULT_MAX_PDU,
    show_default=True,
    help="Largest PDU we accept; also caps the PDUs we send (the peer's maximum still applies).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def send_command(
    address: tuple[str, int],
    calling_ae: str,
    called_ae: str,
    timeout: float,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    paths: tuple[Path, ...],
    recursive: bool,
    max_pdu: int,
    as_json: bool,
) -> None:
    """C-STORE every DICOM Part 10 file in PATHS to HOST:PORT.

    Each file is sent in its own transfer syntax, its data set byte for byte as in the file:
    one presentation context per (SOP class, transfer syntax) found, at most 128 per
    association (more associations when needed). Files that are not DICOM Part 10 are skipped
    and counted. Exits 1 if any file failed.
    """
    host, port = address
    context = build_ssl_context(tls, tls_ca, tls_cert, tls_key)
    scan = scu.scan_paths(paths, recursive)
    failures: list[dict[str, Any]] = [
        {"path": str(path), "sop_instance_uid": None, "status": None, "error": reason}
        for path, reason in scan.invalid
    ]
    sent = warnings = 0
    sent_bytes = 0
    show_bar = bool(scan.files) and not as_json and sys.stderr.isatty()
    start = time.perf_counter()
    with _progress(len(scan.files), show_bar) as bar:

        def on_outcome(outcome: scu.FileOutcome) -> None:
            nonlocal sent, warnings, sent_bytes
            if outcome.ok:
                sent += 1
                sent_bytes += outcome.file.dataset_size
                if outcome.status != dimse.SUCCESS:
                    warnings += 1
            else:
                failures.append(
                    {
                        "path": str(outcome.file.path),
                        "sop_instance_uid": outcome.file.sop_instance_uid,
                        "status": None if outcome.status == scu.LOCAL_FAILURE else outcome.status,
                        "error": _outcome_error(outcome),
                    }
                )
            if bar is not None:
                bar.update(1)

        scu.send_files(
            host,
            port,
            scan.files,
            calling_ae=calling_ae,
            called_ae=called_ae,
            max_pdu=max_pdu,
            timeout=timeout,
            ssl_context=context,
            on_outcome=on_outcome,
        )
    seconds = time.perf_counter() - start
    mb_per_s = sent_bytes / 1e6 / seconds if seconds > 0 and sent_bytes else 0.0
    summary: dict[str, Any] = {
        "peer": _format_peer(host, port, called_ae),
        "sent": sent,
        "warnings": warnings,
        "failed": len(failures),
        "skipped": len(scan.skipped),
        "bytes": sent_bytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(mb_per_s, 2),
        "failures": failures,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for path, reason in scan.skipped:
            if reason != "not a DICOM Part 10 file":
                click.echo(f"skipped {path}: {reason}", err=True)
        for failure in failures:
            status = failure["status"]
            what = scu.status_text(status) if status is not None else "not sent"
            click.echo(f"failed {failure['path']}: {what}: {failure['error']}", err=True)
        click.echo(
            f"{summary['peer']}: sent {sent}"
            + (f" ({warnings} with a warning)" if warnings else "")
            + f", failed {len(failures)}, skipped {len(scan.skipped)}, "
            f"{_human_bytes(sent_bytes)} in {seconds:.2f} s, {mb_per_s:.1f} MB/s"
        )
    if failures:
        raise click.exceptions.Exit(1)
    if not scan.files:
        click.echo("error: no DICOM Part 10 file found", err=True)
        raise click.exceptions.Exit(1)


def _outcome_error(outcome: scu.FileOutcome) -> str:
    if outcome.error:
        return outcome.error
    return scu.status_text(outcome.status)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # unreachable


__all__ = ["build_ssl_context", "echo_command", "parse_address", "send_command"]
