"""Simulated APNs provider API: `POST /3/device/{token}` with ES256 provider tokens.

See docs/simulators.md. This is the hot path of the throughput bench: keep per-request work small.
"""

import itertools
import math
import re
import secrets
import string
import time
import uuid

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.sim.state import ApnsKey, ForcedFailure, Registry, ServiceState
from clarion.sim.wire import JSON_TYPE, Headers, Reply

PATH_PREFIX = "/3/device/"
MAX_PAYLOAD = 4096
TOKEN_LIFETIME = 3600  # Apple rejects provider tokens whose iat is older than one hour
CLOCK_SKEW = 300  # an iat this far in the future is still tolerated
CACHE_LIMIT = 10_000

_DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")
_PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
        "widgets",
        "controls",
    }
)
_PRIORITIES = frozenset({"1", "5", "10"})
# A key for bundle "com.x" also covers "com.x.voip", "com.x.push-type.liveactivity", etc.
_TOPIC_SUFFIXES = (
    ".voip",
    ".complication",
    ".pushkit.fileprovider",
    ".push-type.liveactivity",
    ".push-type.pushtotalk",
    ".push-type.widgets",
    ".push-type.controls",
    ".location-query",
)
_DEFAULT_REASONS = {
    400: "BadDeviceToken",
    403: "InvalidProviderToken",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
_KEY_ALPHABET = string.ascii_uppercase + string.digits
_ID_PREFIX = str(uuid.uuid4())[:24]
_id_counter = itertools.count(1)


def new_apns_id() -> str:
    """UUID-shaped and unique (random per-process prefix + counter), far cheaper than uuid4()."""
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def error(
    status: int, reason: str, *, retry_after: int | None = None, timestamp_ms: int | None = None
) -> Reply:
    headers = [JSON_TYPE, ("apns-id", new_apns_id())]
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    document: dict[str, object] = {"reason": reason}
    if timestamp_ms is not None:
        document["timestamp"] = timestamp_ms  # when the token stopped being valid (410 only)
    return Reply(status, headers, orjson.dumps(document))


def failure(status: int, reason: str | None, retry_after: int | None) -> Reply:
    """An injected fault (random or forced) in APNs's words."""
    reason = reason or _DEFAULT_REASONS.get(status, "InternalServerError")
    timestamp_ms = int(time.time() * 1000) if status == 410 else None
    return error(status, reason, retry_after=retry_after, timestamp_ms=timestamp_ms)


class Verdicts:
    """Cached verdicts, so each distinct provider token and device token is checked once.

    Apple asks providers to reuse a provider token for up to an hour, so at 30,000 pushes/s
    nearly every request carries a JWT already seen; an ES256 verification costs about 100 µs.
    """

    def __init__(self, keys: dict[str, ApnsKey]) -> None:
        self._keys = keys
        self._provider_tokens: dict[str, tuple[ApnsKey | None, str, float]] = {}
        self._device_tokens: set[str] = set()

    def provider_key(self, token: str, now: float) -> tuple[ApnsKey | None, str]:
        """The key that signed `token`, or None and the reason to reject it."""
        verdict = self._provider_tokens.get(token)
        if verdict is None:
            if len(self._provider_tokens) >= CACHE_LIMIT:
                self._provider_tokens.clear()
            verdict = self._provider_tokens[token] = self._verify(token, now)
        key, reason, expires_at = verdict
        if now >= expires_at:
            return None, "ExpiredProviderToken"
        return key, reason

    def is_device_token(self, token: str) -> bool:
        if token in self._device_tokens:
            return True
        if _DEVICE_TOKEN.fullmatch(token) is None:
            return False
        if len(self._device_tokens) >= CACHE_LIMIT:
            self._device_tokens.clear()
        self._device_tokens.add(token)
        return True

    def _verify(self, token: str, now: float) -> tuple[ApnsKey | None, str, float]:
        invalid = (None, "InvalidProviderToken", math.inf)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return invalid
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None or header.get("alg") != "ES256":
            return invalid
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=["ES256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            return invalid
        iat = claims.get("iat")
        if not isinstance(iat, int) or claims.get("iss") != key.team_id or iat > now + CLOCK_SKEW:
            return invalid
        return key, "", float(iat + TOKEN_LIFETIME)


def topic_allowed(topic: str, topics: tuple[str, ...]) -> bool:
    if not topics or topic in topics:
        return True
    return any(topic.endswith(s) and topic[: -len(s)] in topics for s in _TOPIC_SUFFIXES)


def handle_push(
    service: ServiceState,
    verdicts: Verdicts,
    device_token: str,
    headers: Headers,
    body: bytes,
    now: float,
) -> Reply:
    # Every header read is a call into granian (~0.3 µs): read only what the contract checks.
    authorization = headers.get("authorization")
    if not authorization or authorization[:7].lower() != "bearer ":
        return error(403, "MissingProviderToken")
    key, reason = verdicts.provider_key(authorization[7:], now)
    if key is None:
        return error(403, reason)
    topic = headers.get("apns-topic")
    if not topic:
        return error(400, "MissingTopic")
    if key.topics and topic not in key.topics and not topic_allowed(topic, key.topics):
        return error(400, "TopicDisallowed")
    if not verdicts.is_device_token(device_token):
        return error(400, "BadDeviceToken")
    push_type = headers.get("apns-push-type")
    if push_type is not None and push_type not in _PUSH_TYPES:
        return error(400, "InvalidPushType")
    priority = headers.get("apns-priority")
    if priority is not None and priority not in _PRIORITIES:
        return error(400, "BadPriority")
    if not body:
        return error(400, "PayloadEmpty")
    if len(body) > MAX_PAYLOAD:
        return error(413, "PayloadTooLarge")
    if service.forced:
        forced: ForcedFailure | None = service.take_forced(device_token, headers, body, now)
        if forced is not None:
            return failure(forced.status, forced.reason, forced.retry_after)
    if device_token in service.dead:
        return error(410, "Unregistered", timestamp_ms=service.dead[device_token])
    service.record(device_token, headers, body, now)
    return Reply(200, [("apns-id", headers.get("apns-id") or new_apns_id())], b"")


def issue_key(registry: Registry, team_id: str | None, topics: list[str]) -> dict[str, str]:
    """A new .p8 signing key, as the developer console would hand it out."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    key_id = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(10))
    team = team_id or "".join(secrets.choice(_KEY_ALPHABET) for _ in range(10))
    registry.apns_keys[key_id] = ApnsKey(key_id, team, tuple(topics), private_key.public_key())
    registry.save()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {"key_id": key_id, "team_id": team, "private_key_pem": pem}
