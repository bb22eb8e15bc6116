"""Runs the simulators under granian: RSGI, one worker, HTTPS with HTTP/2 (ALPN) and HTTP/1.1.

See docs/simulators.md.
"""

import os
from pathlib import Path

from granian import Granian
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP2Settings

from clarion.sim.app import ENV_HOST, ENV_STATE_DIR
from clarion.sim.certs import ensure_certificates

# Apple advertises 1000 concurrent streams; granian's default (200) would throttle Clarion's
# senders before the simulator itself does.
MAX_CONCURRENT_STREAMS = 1000


def run(host: str, port: int, state_dir: Path) -> None:
    """Serve until SIGINT/SIGTERM."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    certificates = ensure_certificates(state_dir)
    os.environ[ENV_STATE_DIR] = str(state_dir)
    os.environ[ENV_HOST] = host
    server = Granian(
        "clarion.sim.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        # Issued credentials, messages and faults live in the process: exactly one worker.
        workers=1,
        http=HTTPModes.auto,
        http2_settings=HTTP2Settings(max_concurrent_streams=MAX_CONCURRENT_STREAMS),
        websockets=False,
        ssl_cert=certificates.cert,
        ssl_key=certificates.key,
        ssl_protocol_min=SSLProtocols.tls12,
        log_access=False,
    )
    server.serve()
