"""Simulated FCM HTTP v1: the OAuth2 token endpoint and `messages:send`.

See docs/simulators.md.
"""

import re
import secrets
from urllib.parse import parse_qs

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clarion.sim.state import AccessToken, Registry, ServiceAccount, SimState
from clarion.sim.wire import Headers, Reply, json_reply

SEND_PREFIX = "/v1/projects/"
SEND_SUFFIX = "/messages:send"
TOKEN_PATH = "/token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
ACCESS_TOKEN_LIFETIME = 3600
CLOCK_SKEW = 300
TOKENS_KEPT = 10_000

# Real registration tokens are ~160 characters of this alphabet; anything else is "malformed".
_REGISTRATION_TOKEN = re.compile(r"[A-Za-z0-9_:\-.]{1,4096}")
# status -> (Google status, FCM errorCode, message). 401 carries no FcmError, as with Google.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: (
        "UNAUTHENTICATED",
        None,
        "Request had invalid authentication credentials. Expected OAuth 2 access token.",
    ),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    404: ("NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded for the project."),
    500: ("INTERNAL", "INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
}
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def error(
    status: int,
    message: str | None = None,
    error_code: str | None = None,
    retry_after: int | None = None,
) -> Reply:
    google_status, default_code, default_message = _ERRORS.get(
        status, ("UNKNOWN", "UNSPECIFIED_ERROR", "Unknown error.")
    )
    body: dict[str, object] = {
        "code": status,
        "message": message or default_message,
        "status": google_status,
    }
    code = error_code or default_code
    if code is not None:
        body["details"] = [{"@type": _FCM_ERROR_TYPE, "errorCode": code}]
    extra = [("retry-after", str(retry_after))] if retry_after is not None else []
    return json_reply(status, {"error": body}, *extra)


def failure(status: int, reason: str | None, retry_after: int | None) -> Reply:
    """An injected fault; a 429 always says when to come back, as the contract promises."""
    if retry_after is None and status == 429:
        retry_after = 1
    return error(status, error_code=reason, retry_after=retry_after)


def _grant_error(description: str, kind: str = "invalid_grant") -> Reply:
    return json_reply(400, {"error": kind, "error_description": description})


def _verify_assertion(account: ServiceAccount, assertion: str, origin: str) -> str | None:
    """Why Google would refuse this assertion, or None if it is good."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(
            assertion,
            account.public_key,
            algorithms=["RS256"],
            # The token URI written into the service account, or this server's own origin if
            # the simulator now answers on another port.
            audience=[account.token_uri, origin + TOKEN_PATH],
            options={"require": ["iss", "aud", "iat", "exp"]},
            leeway=CLOCK_SKEW,
        )
    except jwt.PyJWTError as exc:
        return f"Invalid JWT: {exc}"
    kid = header.get("kid")
    if kid is not None and kid != account.private_key_id:
        return "Invalid JWT Signature."
    if SCOPE not in str(claims.get("scope", "")).split():
        return "Invalid OAuth scope or ID token audience provided."
    if claims["exp"] - claims["iat"] > ACCESS_TOKEN_LIFETIME:
        return "Invalid JWT: Token must be a short-lived token (60 minutes)."
    return None


def handle_token(sim: SimState, body: bytes, origin: str, now: float) -> Reply:
    form = parse_qs(body.decode("utf-8", "replace"))
    if form.get("grant_type", [""])[0] != GRANT_TYPE:
        return _grant_error("Invalid grant_type.", "unsupported_grant_type")
    assertion = form.get("assertion", [""])[0]
    try:
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return _grant_error("Invalid JWT.")
    account = sim.registry.service_accounts.get(issuer) if isinstance(issuer, str) else None
    if account is None:
        return _grant_error("Invalid grant: account not found")
    problem = _verify_assertion(account, assertion, origin)
    if problem is not None:
        return _grant_error(problem)
    if len(sim.access_tokens) >= TOKENS_KEPT:
        sim.access_tokens = {t: a for t, a in sim.access_tokens.items() if a.expires_at > now}
    token = "ya29.sim-" + secrets.token_urlsafe(32)
    sim.access_tokens[token] = AccessToken(account.project_id, now + ACCESS_TOKEN_LIFETIME)
    return json_reply(
        200,
        {"access_token": token, "expires_in": ACCESS_TOKEN_LIFETIME, "token_type": "Bearer"},
    )


def handle_send(sim: SimState, project_id: str, headers: Headers, body: bytes, now: float) -> Reply:
    authorization = headers.get("authorization")
    if not authorization or authorization[:7].lower() != "bearer ":
        return error(401)
    grant = sim.access_tokens.get(authorization[7:])
    if grant is None or grant.expires_at <= now:
        return error(401)
    if grant.project_id != project_id:
        return error(403)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error(400, "Invalid JSON payload received.")
    message = document.get("message") if isinstance(document, dict) else None
    if not isinstance(message, dict):
        return error(400, "Request contains an invalid argument: message is required.")
    token = message.get("token")
    if not isinstance(token, str) or _REGISTRATION_TOKEN.fullmatch(token) is None:
        return error(400, "The registration token is not a valid FCM registration token")
    service = sim.fcm
    forced = service.take_forced(token, headers, body, now)
    if forced is not None:
        return failure(forced.status, forced.reason, forced.retry_after)
    if token in service.dead:
        return error(404)
    if document.get("validate_only") is True:
        return json_reply(200, {"name": f"projects/{project_id}/messages/fake_message_id"})
    service.record(token, headers, body, now)
    return json_reply(200, {"name": f"projects/{project_id}/messages/{sim.next_id()}"})


def issue_service_account(
    registry: Registry, project_id: str | None, origin: str
) -> dict[str, str]:
    """A new service-account JSON, as the Google Cloud console would hand it out."""
    project = project_id or f"sim-project-{secrets.token_hex(3)}"
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = ServiceAccount(
        client_email=f"sim-{secrets.token_hex(4)}@{project}.iam.gserviceaccount.com",
        project_id=project,
        private_key_id=secrets.token_hex(20),
        token_uri=origin + TOKEN_PATH,
        public_key=private_key.public_key(),
    )
    registry.service_accounts[account.client_email] = account
    registry.save()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": account.private_key_id,
        "private_key": pem,
        "client_email": account.client_email,
        "client_id": str(secrets.randbelow(10**21)).zfill(21),
        "token_uri": account.token_uri,
    }
