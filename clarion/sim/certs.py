"""Throwaway TLS material for the simulators: a CA and a server certificate for loopback.

See docs/simulators.md. Files are reused across restarts so a CA that Clarion already trusts
(CLARION_PROVIDER_CA_FILE) stays valid.
"""

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class CertificatePaths:
    ca: Path
    cert: Path
    key: Path


def ensure_certificates(state_dir: Path) -> CertificatePaths:
    paths = CertificatePaths(
        ca=state_dir / "ca.pem", cert=state_dir / "server.pem", key=state_dir / "server.key"
    )
    if paths.ca.exists() and paths.cert.exists() and paths.key.exists():
        return paths
    # trustme certificates expire in the year 3000, so reused files never need renewing.
    ca = trustme.CA(organization_name="Clarion simulator CA")
    server = ca.issue_cert("127.0.0.1", "localhost", "::1")
    server.private_key_pem.write_to_path(str(paths.key))
    paths.key.chmod(0o600)
    paths.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    # The CA last: its presence is what callers wait for.
    ca.cert_pem.write_to_path(str(paths.ca))
    return paths
