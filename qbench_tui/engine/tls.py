"""TLS trust for every connection to the server under test (the load's raw client and the httpx side channels
alike), so `--ca-cert` and `--insecure` mean the same for completions, /metrics, /version and /v1/models."""
from __future__ import annotations

import functools
import ssl


@functools.lru_cache(maxsize=4)
def make_ssl_context(ca_cert: str = "", insecure: bool = False) -> ssl.SSLContext:
    """One context per process and setting: each loads the CA bundle (~30 ms), and there is a client per worker.

    `ca_cert` (a PEM file) is trusted besides the system's CAs (SSL_CERT_FILE still counts, as OpenSSL reads it);
    `insecure` checks neither the certificate nor the host name (the command warns)."""
    ctx = ssl.create_default_context()
    if ca_cert:
        ctx.load_verify_locations(cafile=ca_cert)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
