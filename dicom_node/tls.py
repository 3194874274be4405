"""TLS for DICOM associations (DICOM PS3.15 Annex B secure transport, BCP 195 style).

One certificate/key pair identifies the node both as a server (its TLS port) and as a
client (when it sends to a destination marked ``tls = true``). Peers are verified against
the configured CA bundle; a server without a CA bundle accepts no TLS client (mutual
authentication is the point: the calling AE title alone proves nothing).
"""

from __future__ import annotations

import ssl

from dicom_node.config import SecuritySection


class TLSConfigError(ValueError):
    pass


def _base(purpose: ssl.Purpose, security: SecuritySection) -> ssl.SSLContext:
    if not (security.tls_certificate and security.tls_private_key and security.tls_ca_certificates):
        raise TLSConfigError("[security] tls_certificate, tls_private_key and tls_ca_certificates are all needed")
    ctx = ssl.create_default_context(purpose, cafile=security.tls_ca_certificates)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(security.tls_certificate, security.tls_private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the node's TLS certificate/key: {exc}") from exc
    return ctx


def server_context(security: SecuritySection) -> ssl.SSLContext:
    """For the node's TLS listener: client certificates are required and verified."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH, security)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(security: SecuritySection) -> ssl.SSLContext:
    """For the node's outgoing associations: the server's certificate is verified."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, security)
    # DICOM peers are addressed by IP in most hospitals; the CA bundle is the trust anchor
    ctx.check_hostname = security.tls_verify_hostname
    return ctx


def peer_subject(sock) -> str:
    """Common name of the peer's certificate ('' on a plain socket)."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return ""
    try:
        cert = getpeercert() or {}
    except (ValueError, OSError):
        return ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""
