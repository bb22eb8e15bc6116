"""The simulators' RSGI application: routes each request by path to APNs, FCM, Web Push or `/_sim/`.

See docs/simulators.md. Granian imports `create_app` by name in its worker process, so the state
directory travels in the CLARION_SIM_STATE_DIR environment variable.
"""

import asyncio
import gc
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from clarion.sim import apns, control, fcm, webpush
from clarion.sim.certs import ensure_certificates
from clarion.sim.h2conn import ConnectionListener
from clarion.sim.state import ServiceState, SimState
from clarion.sim.wire import Headers, Reply, json_reply

ENV_STATE_DIR = "CLARION_SIM_STATE_DIR"
ENV_HOST = "CLARION_SIM_HOST"  # where the second (h2) listener binds: the simulators' host

FailureRenderer = Callable[[int, str | None, int | None], Reply]


class Scope(Protocol):
    """What is read of a request: granian's RSGI scope, or clarion.sim.h2conn.Scope."""

    @property
    def path(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def client(self) -> str: ...
    @property
    def authority(self) -> str | None: ...


class HTTPProtocol(Protocol):
    """The part of granian's RSGIHTTPProtocol used here (granian does not re-export its type)."""

    async def __call__(self) -> bytes: ...

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...


def _is_loopback(client: str) -> bool:
    host = client.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(scope: Scope) -> str:
    # HTTP/2 carries :authority; HTTP/1.1 carries Host.
    authority = scope.authority or scope.headers.get("host") or "127.0.0.1"
    return f"https://{authority}"


class SimulatorApp:
    def __init__(self, sim: SimState, listener: ConnectionListener | None = None) -> None:
        self.sim = sim
        self.apns_verdicts = apns.Verdicts(sim.registry.apns_keys)
        self.listener = listener
        if listener is not None:
            sim.connections.url = listener.url

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # granian calls this in its worker process with the loop the app runs on.
        if self.listener is not None:
            self.listener.start(loop, self.__rsgi__)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.listener is not None:
            self.listener.close()

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        # Websockets are off (server.py), so every scope is HTTP. Each scope attribute or header
        # read crosses into Rust (~0.3 µs), which is why the APNs path reads as few as it can.
        path = scope.path
        if path.startswith(apns.PATH_PREFIX):
            service = self.sim.apns
            body = await protocol()
            # A push always has a body, so the method is only read when there is none (saving a
            # call into granian per push); a PUT with a body would pass for a POST.
            if body and not service.fault_thresholds and not service.delay_ms:
                reply = apns.handle_push(
                    service,
                    self.apns_verdicts,
                    path[len(apns.PATH_PREFIX) :],
                    scope.headers,
                    body,
                    time.time(),
                )
                if reply.status < 300:
                    service.accepted += 1
                else:
                    service.rejected += 1
            else:
                reply = await self._apns(scope, path[len(apns.PATH_PREFIX) :], body)
        elif path.startswith(fcm.SEND_PREFIX) and path.endswith(fcm.SEND_SUFFIX):
            project_id = path[len(fcm.SEND_PREFIX) : -len(fcm.SEND_SUFFIX)]
            reply = await self._fcm_send(scope, protocol, project_id)
        elif path == fcm.TOKEN_PATH:
            body = await protocol()
            reply = (
                fcm.handle_token(self.sim, body, _origin(scope), time.time())
                if scope.method == "POST"
                else fcm.error(405, "Method not allowed")
            )
        elif path.startswith(webpush.PATH_PREFIX):
            reply = await self._webpush(scope, protocol, path[len(webpush.PATH_PREFIX) :])
        elif path.startswith(control.PATH_PREFIX):
            body = await protocol()
            if _is_loopback(scope.client):
                reply = control.handle(
                    self.sim, scope.method, path, body, _origin(scope), time.time()
                )
            else:
                reply = json_reply(403, {"error": "the control API answers loopback clients only"})
        else:
            reply = json_reply(404, {"error": f"nothing simulated at {path}"})
        protocol.response_bytes(reply.status, reply.headers, reply.body)

    async def _injected(self, service: ServiceState, render: FailureRenderer) -> Reply | None:
        """A random fault, drawn before anything else, as an overloaded front end would."""
        if service.delay_ms:
            await asyncio.sleep(service.delay_ms / 1000)
        status = service.pick_fault()
        return None if status is None else render(status, None, None)

    @staticmethod
    def _count(service: ServiceState, reply: Reply) -> Reply:
        if reply.status < 300:
            service.accepted += 1
        else:
            service.rejected += 1
        return reply

    async def _apns(self, scope: Scope, device_token: str, body: bytes) -> Reply:
        service = self.sim.apns
        reply = await self._injected(service, apns.failure)
        if reply is None:
            if scope.method != "POST":
                reply = apns.error(405, "MethodNotAllowed")
            else:
                reply = apns.handle_push(
                    service, self.apns_verdicts, device_token, scope.headers, body, time.time()
                )
        return self._count(service, reply)

    async def _fcm_send(self, scope: Scope, protocol: HTTPProtocol, project_id: str) -> Reply:
        service = self.sim.fcm
        body = await protocol()
        reply = await self._injected(service, fcm.failure)
        if reply is None:
            if scope.method != "POST":
                reply = fcm.error(405, "Method not allowed")
            else:
                reply = fcm.handle_send(self.sim, project_id, scope.headers, body, time.time())
        return self._count(service, reply)

    async def _webpush(self, scope: Scope, protocol: HTTPProtocol, subscription_id: str) -> Reply:
        service = self.sim.webpush
        body = await protocol()
        reply = await self._injected(service, webpush.failure)
        if reply is None:
            if scope.method != "POST":
                reply = webpush.error(405, "Method not allowed")
            else:
                reply = webpush.handle_push(
                    self.sim, subscription_id, scope.headers, body, _origin(scope), time.time()
                )
        return self._count(service, reply)


def create_app() -> SimulatorApp:
    state_dir = os.environ.get(ENV_STATE_DIR)
    if not state_dir:
        raise RuntimeError(f"{ENV_STATE_DIR} must name the simulator's state directory")
    sim = SimState(Path(state_dir))
    certificates = ensure_certificates(Path(state_dir))
    listener = ConnectionListener(
        os.environ.get(ENV_HOST, "127.0.0.1"),
        str(certificates.cert),
        str(certificates.key),
        sim.connections,
    )
    app = SimulatorApp(sim, listener)
    # Every push allocates a few container objects (granian's task, coroutine, reply) while the
    # simulator keeps growing long-lived state (messages per token). With CPython's default
    # thresholds the cyclic GC then took 19% of the worker's CPU under load (py-spy, 4,000
    # pushes/s); nothing here builds reference cycles worth collecting often.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    return app
