"""Simulated Web Push service (RFC 8030) with VAPID (RFC 8292) and aes128gcm (RFC 8291).

See docs/simulators.md. The simulator also plays the browser: it holds each subscription's
private key and decrypts what it receives, so tests can read the plaintext back.
"""

import re
import secrets

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.sim.state import Registry, SimState, Subscription
from clarion.sim.wire import Headers, Reply, b64url_decode, b64url_encode, json_reply

PATH_PREFIX = "/wp/"
MAX_BODY = 4096
MAX_VAPID_LIFETIME = 24 * 3600  # RFC 8292 §2: exp no more than 24 hours from the request
_URGENCIES = frozenset({"very-low", "low", "normal", "high"})
_TOPIC = re.compile(r"[A-Za-z0-9_\-]{1,32}")
_PHRASES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    410: "Gone",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def error(status: int, message: str, retry_after: int | None = None) -> Reply:
    """Errors shaped like Mozilla autopush's JSON bodies."""
    extra = [("retry-after", str(retry_after))] if retry_after is not None else []
    document = {"code": status, "error": _PHRASES.get(status, "Error"), "message": message}
    return json_reply(status, document, *extra)


def failure(status: int, reason: str | None, retry_after: int | None) -> Reply:
    if retry_after is None and status == 429:
        retry_after = 1
    return error(status, reason or "Injected failure", retry_after)


def _parse_vapid(value: str) -> tuple[str, str] | None:
    """`vapid t=<jwt>, k=<key>` → (jwt, key)."""
    scheme, _, params = value.strip().partition(" ")
    if scheme.lower() != "vapid":
        return None
    fields: dict[str, str] = {}
    for item in params.split(","):
        name, sep, text = item.strip().partition("=")
        if sep:
            fields[name.strip().lower()] = text.strip()
    if "t" not in fields or "k" not in fields:
        return None
    return fields["t"], fields["k"]


def _vapid_problem(authorization: str, subscription: Subscription, origin: str, now: float) -> str:
    """Why the VAPID authorization is refused, or "" when it is good."""
    parsed = _parse_vapid(authorization)
    if parsed is None:
        return "Authorization is not a vapid t=…, k=… header"
    token, key_text = parsed
    try:
        raw_key = b64url_decode(key_text)
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw_key)
    except ValueError:
        return "k is not a P-256 public key"
    try:
        claims = jwt.decode(
            token,
            public_key,
            algorithms=["ES256"],
            audience=origin,
            options={"require": ["aud", "exp"]},
        )
    except jwt.PyJWTError as exc:
        return f"Invalid VAPID JWT: {exc}"
    if claims["exp"] > now + MAX_VAPID_LIFETIME:
        return "VAPID exp is more than 24 hours away"
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        return "VAPID sub is missing"
    if raw_key != subscription.application_server_key:
        return "k is not the applicationServerKey of this subscription"
    return ""


def _header_problem(headers: Headers) -> Reply | None:
    ttl = headers.get("ttl")
    if ttl is None or not ttl.isdigit():
        return error(400, "Missing or invalid TTL header")
    encoding = headers.get("content-encoding")
    if encoding is None or encoding.lower() != "aes128gcm":
        return error(415, "Content-Encoding must be aes128gcm")
    urgency = headers.get("urgency")
    if urgency is not None and urgency not in _URGENCIES:
        return error(400, "Urgency must be very-low, low, normal or high")
    topic = headers.get("topic")
    if topic is not None and _TOPIC.fullmatch(topic) is None:
        return error(400, "Topic must be at most 32 base64url characters")
    return None


def handle_push(
    sim: SimState, subscription_id: str, headers: Headers, body: bytes, origin: str, now: float
) -> Reply:
    subscription = sim.registry.subscriptions.get(subscription_id)
    if subscription is None:
        return error(404, "No such subscription")
    header_problem = _header_problem(headers)
    if header_problem is not None:
        return header_problem
    authorization = headers.get("authorization")
    if not authorization:
        return error(401, "Missing VAPID authorization")
    problem = _vapid_problem(authorization, subscription, origin, now)
    if problem:
        return error(403, problem)
    service = sim.webpush
    forced = service.take_forced(subscription_id, headers, b"", now)
    if forced is not None:
        return failure(forced.status, forced.reason, forced.retry_after)
    if subscription_id in service.dead:
        return error(410, "Subscription has been unsubscribed")
    if len(body) > MAX_BODY:
        return error(413, f"Body is larger than {MAX_BODY} bytes")
    try:
        plaintext = http_ece.decrypt(
            body,
            private_key=subscription.private_key,
            auth_secret=subscription.auth_secret,
            version="aes128gcm",
        )
    # http_ece raises its own, cryptography's and struct's errors; any of them means undecryptable.
    except Exception:
        return error(400, "Body could not be decrypted")
    service.record(subscription_id, headers, plaintext, now)
    location = f"{origin}{PATH_PREFIX}{subscription_id}/messages/{sim.next_id()}"
    return Reply(201, [("location", location), ("ttl", headers.get("ttl"))], b"")


def subscribe(registry: Registry, application_server_key: str, origin: str) -> dict[str, object]:
    """Play the browser's pushManager.subscribe(): a fresh P-256 key pair and auth secret."""
    raw_key = b64url_decode(application_server_key)
    # Validates the point; raises ValueError for anything but an uncompressed P-256 key.
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw_key)
    if len(raw_key) != 65:
        raise ValueError("application_server_key must be an uncompressed P-256 point")
    private_key = ec.generate_private_key(ec.SECP256R1())
    subscription = Subscription(
        subscription_id=secrets.token_urlsafe(16),
        application_server_key=raw_key,
        private_key=private_key,
        auth_secret=secrets.token_bytes(16),
    )
    registry.subscriptions[subscription.subscription_id] = subscription
    registry.save()
    p256dh = private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {
        "endpoint": f"{origin}{PATH_PREFIX}{subscription.subscription_id}",
        "keys": {"p256dh": b64url_encode(p256dh), "auth": b64url_encode(subscription.auth_secret)},
    }
