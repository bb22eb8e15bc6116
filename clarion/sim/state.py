"""State of the simulators: issued credentials (persisted) and what was received (in memory).

See docs/simulators.md. Granian runs the app on one worker's event loop, so nothing here locks.
"""

import os
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clarion.sim.wire import Headers, b64url_decode, b64url_encode

REGISTRY_FILE = "registry.json"
MESSAGES_KEPT = 10
TOKENS_TRACKED = 100_000  # ~1 KB each with their last message
ARRIVALS_PER_SECOND = 10  # accepted pushes are counted per 100 ms (GET /_sim/{service}/deliveries)
SERVICES = ("apns", "fcm", "webpush")


@dataclass(frozen=True, slots=True)
class ApnsKey:
    key_id: str
    team_id: str
    topics: tuple[str, ...]
    public_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    client_email: str
    project_id: str
    private_key_id: str
    token_uri: str
    public_key: rsa.RSAPublicKey


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: str
    application_server_key: bytes  # the raw 65-byte uncompressed P-256 point
    private_key: ec.EllipticCurvePrivateKey  # the simulated browser's, to decrypt
    auth_secret: bytes


def _public_pem(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _load_ec_public(pem: str) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError("expected an EC public key")
    return key


def _load_rsa_public(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise TypeError("expected an RSA public key")
    return key


def _load_ec_private(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("expected an EC private key")
    return key


class Registry:
    """Credentials the simulators issued; persisted so a restart still accepts them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.apns_keys: dict[str, ApnsKey] = {}
        self.service_accounts: dict[str, ServiceAccount] = {}
        self.subscriptions: dict[str, Subscription] = {}
        if path.exists():
            self._load(orjson.loads(path.read_bytes()))

    def _load(self, doc: dict[str, Any]) -> None:
        for kid, item in doc.get("apns_keys", {}).items():
            self.apns_keys[kid] = ApnsKey(
                kid, item["team_id"], tuple(item["topics"]), _load_ec_public(item["public_key"])
            )
        for email, item in doc.get("service_accounts", {}).items():
            self.service_accounts[email] = ServiceAccount(
                email,
                item["project_id"],
                item["private_key_id"],
                item["token_uri"],
                _load_rsa_public(item["public_key"]),
            )
        for sub_id, item in doc.get("subscriptions", {}).items():
            self.subscriptions[sub_id] = Subscription(
                sub_id,
                b64url_decode(item["application_server_key"]),
                _load_ec_private(item["private_key"]),
                b64url_decode(item["auth"]),
            )

    def save(self) -> None:
        doc = {
            "apns_keys": {
                k.key_id: {
                    "team_id": k.team_id,
                    "topics": list(k.topics),
                    "public_key": _public_pem(k.public_key),
                }
                for k in self.apns_keys.values()
            },
            "service_accounts": {
                a.client_email: {
                    "project_id": a.project_id,
                    "private_key_id": a.private_key_id,
                    "token_uri": a.token_uri,
                    "public_key": _public_pem(a.public_key),
                }
                for a in self.service_accounts.values()
            },
            "subscriptions": {
                s.subscription_id: {
                    "application_server_key": b64url_encode(s.application_server_key),
                    "private_key": s.private_key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ).decode(),
                    "auth": b64url_encode(s.auth_secret),
                }
                for s in self.subscriptions.values()
            },
        }
        # Write then rename: a simulator killed mid-write must not lose every credential.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)


@dataclass(slots=True)
class ForcedFailure:
    status: int
    reason: str | None
    remaining: int
    retry_after: int | None


class Received(NamedTuple):  # a tuple: a frozen dataclass costs ~1 µs more per push
    # granian's headers object owns its copy of the request's headers: keeping it costs nothing
    # per push, where copying them into a dict costs several µs.
    headers: Headers
    body: bytes  # raw; parsed only when read back, to keep the hot path cheap
    received_at: float


@dataclass(slots=True)
class TokenLog:
    count: int = 0
    messages: deque[Received] = field(default_factory=lambda: deque(maxlen=MESSAGES_KEPT))
    # Requests answered with a forced failure (`/fail`): what a sender put in an attempt that
    # was refused, to compare with its retry (Web Push: no body, it is refused still encrypted).
    refused: deque[Received] = field(default_factory=lambda: deque(maxlen=MESSAGES_KEPT))


class ServiceState:
    """One simulated service's observations and injected faults; all forgotten by reset()."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.logs: dict[str, TokenLog] = {}
        self.dead: dict[str, int] = {}  # token -> uninstall time in ms, as APNs reports it
        self.forced: dict[str, ForcedFailure] = {}
        # Cumulative thresholds, so one random draw picks at most one fault.
        self.fault_thresholds: tuple[tuple[float, int], ...] = ()
        self.delay_ms = 0
        # Every accepted push, kept compactly so that a benchmark to millions of tokens can
        # check that none got two (the logs forget tokens past TOKENS_TRACKED) and see when
        # sending stalled: a hash per token (~70 bytes each, 1,000,000 tokens ~70 MB; a
        # collision among 10^6 64-bit hashes has odds of ~3 in 10^8) and a count per 100 ms.
        self.seen: set[int] = set()
        self.repeated = 0  # accepted pushes to a token that had already accepted one
        self.arrivals: dict[int, int] = {}

    def set_faults(self, rates: dict[int, float], delay_ms: int) -> None:
        thresholds: list[tuple[float, int]] = []
        total = 0.0
        for status, rate in sorted(rates.items()):
            if rate > 0:
                total += rate
                thresholds.append((total, status))
        self.fault_thresholds = tuple(thresholds)
        self.delay_ms = delay_ms

    def pick_fault(self) -> int | None:
        if not self.fault_thresholds:
            return None
        draw = random.random()  # fault injection, not cryptography
        for threshold, status in self.fault_thresholds:
            if draw < threshold:
                return status
        return None

    def take_forced(
        self, token: str, headers: Headers, body: bytes, now: float
    ) -> ForcedFailure | None:
        forced = self.forced.get(token)
        if forced is None:
            return None
        forced.remaining -= 1
        if forced.remaining <= 0:
            del self.forced[token]
        self._log(token).refused.append(Received(headers, body, now))
        return forced

    def record(self, token: str, headers: Headers, body: bytes, now: float) -> None:
        log = self._log(token)
        log.count += 1
        log.messages.append(Received(headers, body, now))
        key = hash(token)
        if key in self.seen:
            self.repeated += 1
        else:
            self.seen.add(key)
        slot = int(now * ARRIVALS_PER_SECOND)
        self.arrivals[slot] = self.arrivals.get(slot, 0) + 1

    def _log(self, token: str) -> TokenLog:
        log = self.logs.get(token)
        if log is None:
            if len(self.logs) >= TOKENS_TRACKED:
                # A fan-out benchmark to millions of tokens must not grow memory without bound:
                # forget the token seen first (dicts keep insertion order).
                del self.logs[next(iter(self.logs))]
            log = self.logs[token] = TokenLog()
        return log

    def deliveries(self) -> dict[str, Any]:
        """Accepted pushes: distinct tokens, repeats, and [time, count] per 100 ms slot."""
        return {
            "tokens": len(self.seen),
            "repeated": self.repeated,
            "slot_seconds": 1 / ARRIVALS_PER_SECOND,
            "arrivals": [
                [slot / ARRIVALS_PER_SECOND, count] for slot, count in sorted(self.arrivals.items())
            ],
        }

    def stats(self) -> dict[str, int]:
        requests = self.accepted + self.rejected
        return {"requests": requests, "accepted": self.accepted, "rejected": self.rejected}


@dataclass(slots=True)
class ConnectionRules:
    """How the h2 listener's connections behave (clarion/sim/h2conn.py); reset() restores them.

    By default like APNs: a new connection allows 1 stream until it has answered a request,
    then `streams`. `drop_rate`: the share of requests after which the connection is closed
    instead of answered (the request was acted on).
    """

    url: str = ""  # where the listener is, set when it starts
    initial_streams: int = 1
    streams: int = 1000
    drop_rate: float = 0.0
    connections: int = 0  # accepted since the last reset
    dropped: int = 0  # connections closed instead of answering
    refused_streams: int = 0  # streams over a connection's limit, refused (REFUSED_STREAM)

    def reset(self) -> None:
        self.initial_streams, self.streams, self.drop_rate = 1, 1000, 0.0
        self.connections = self.dropped = self.refused_streams = 0


@dataclass(frozen=True, slots=True)
class AccessToken:
    project_id: str
    expires_at: float


class SimState:
    def __init__(self, state_dir: Path) -> None:
        self.registry = Registry(state_dir / REGISTRY_FILE)
        self.services = {name: ServiceState() for name in SERVICES}
        self.apns = self.services["apns"]
        self.fcm = self.services["fcm"]
        self.webpush = self.services["webpush"]
        # FCM access tokens are not persisted: after a restart Clarion must fetch a new one,
        # exactly as it must when Google answers 401.
        self.access_tokens: dict[str, AccessToken] = {}
        self.sequence = 0  # message ids for FCM names and Web Push locations
        self.connections = ConnectionRules()

    def next_id(self) -> int:
        self.sequence += 1
        return self.sequence

    def reset(self) -> None:
        for service in self.services.values():
            service.reset()
        self.connections.reset()
