"""TLS for the connectors: the system's CAs plus the operator's (CLARION_CONNECTOR_CA_FILE)."""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from pathlib import Path


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's CAs, plus the operator's (CLARION_CONNECTOR_CA_FILE) if any."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def bundle_with_system_cas(ca_file: str) -> str:
    """botocore takes one bundle file, which replaces its own: the system's CAs and the
    operator's, concatenated once into the temporary folder."""
    system = ssl.get_default_verify_paths().cafile
    extra = Path(ca_file).read_bytes()
    bundle = (
        Path(tempfile.gettempdir()) / f"clarion-ca-{hashlib.sha256(extra).hexdigest()[:16]}.pem"
    )
    if not bundle.exists():
        staged = bundle.with_suffix(f".{os.getpid()}.tmp")
        staged.write_bytes((Path(system).read_bytes() if system else b"") + b"\n" + extra)
        staged.replace(bundle)
    return str(bundle)
