"""TLS for DICOM (PS3.15 Annex B.9 BCP 195 profiles): server contexts and certificate checks.

- "bcp195": TLS 1.2 and 1.3, the BCP 195 recommended cipher suites (ECDHE/DHE with AES-GCM or
  ChaCha20-Poly1305), no compression, no renegotiation.
- "non-downgrading": TLS 1.2+ with ECDHE and AEAD suites only, so no peer can negotiate a
  weaker suite than the profile allows.
Mutual TLS when a CA bundle is configured: the client must present a certificate it signed.
"""

from __future__ import annotations

import ssl
from pathlib import Path

# OpenSSL names of the TLS 1.2 suites (TLS 1.3 suites are all AEAD and always on).
BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)
NON_DOWNGRADING_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    )
)


def server_context(
    cert: Path, key: Path, *, ca: Path | None = None, profile: str = "bcp195"
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(NON_DOWNGRADING_CIPHERS if profile == "non-downgrading" else BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(cert), str(key))
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """For `store-scp echo/send --tls`: verify the server, optionally present a certificate."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def peer_common_name(peercert: dict | None) -> str:
    """The subject CN of a verified client certificate, or ""."""
    if not peercert:
        return ""
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return ""
