"""The simulators over real TLS and HTTP/2, as Clarion's providers will meet them."""

import base64
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h2.connection
import h2.events
import h2.settings
import http_ece
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from py_vapid import Vapid02

from tests.support.simulator import SimulatorHandle, running_simulator

DEVICE_TOKEN = "ab" * 32
FIREBASE_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
APNS_BODY = {"aps": {"alert": {"title": "Hello", "body": "from Clarion"}}}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass(frozen=True)
class ApnsKey:
    key_id: str
    team_id: str
    private_key_pem: str

    def token(self, *, iat: int | None = None, kid: str | None = None) -> str:
        return jwt.encode(
            {"iss": self.team_id, "iat": int(time.time()) if iat is None else iat},
            self.private_key_pem,
            algorithm="ES256",
            headers={"kid": kid or self.key_id},
        )

    def headers(self, topic: str | None = "com.example.app", **extra: str) -> dict[str, str]:
        headers = {"authorization": f"bearer {self.token()}", "apns-push-type": "alert"}
        if topic is not None:
            headers["apns-topic"] = topic
        return headers | extra


@pytest.fixture
def apns_key(control: httpx.Client) -> ApnsKey:
    answer = control.post("/_sim/apns/keys", json={"topics": ["com.example.app"]})
    assert answer.status_code == 201
    body = answer.json()
    return ApnsKey(body["key_id"], body["team_id"], body["private_key_pem"])


def service_account_assertion(account: dict[str, Any], **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": account["client_email"],
        "aud": account["token_uri"],
        "scope": FIREBASE_SCOPE,
        "iat": now,
        "exp": now + 3600,
    } | overrides
    return jwt.encode(
        claims,
        account["private_key"],
        algorithm="RS256",
        headers={"kid": account["private_key_id"]},
    )


@dataclass(frozen=True)
class FcmProject:
    account: dict[str, Any]
    access_token: str

    @property
    def send_path(self) -> str:
        return f"/v1/projects/{self.account['project_id']}/messages:send"

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}


@pytest.fixture
def fcm_project(control: httpx.Client, h2_client: httpx.Client) -> FcmProject:
    account = control.post("/_sim/fcm/service-accounts", json={}).json()
    answer = h2_client.post(
        "/token",
        data={"grant_type": JWT_BEARER, "assertion": service_account_assertion(account)},
    )
    assert answer.status_code == 200, answer.text
    return FcmProject(account, answer.json()["access_token"])


@dataclass(frozen=True)
class WebPushSender:
    """The application server: a VAPID key pair and one simulated browser's subscription."""

    vapid_key: ec.EllipticCurvePrivateKey
    endpoint: str
    p256dh: str
    auth: str

    @property
    def subscription_id(self) -> str:
        return self.endpoint.rsplit("/", 1)[1]

    @property
    def vapid_private_pem(self) -> bytes:
        return self.vapid_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def subscribe(control: httpx.Client) -> WebPushSender:
    vapid_key = ec.generate_private_key(ec.SECP256R1())
    public = vapid_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    answer = control.post(
        "/_sim/webpush/subscriptions", json={"application_server_key": b64url(public)}
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    return WebPushSender(vapid_key, body["endpoint"], body["keys"]["p256dh"], body["keys"]["auth"])


@pytest.fixture
def webpush_sender(control: httpx.Client) -> WebPushSender:
    return subscribe(control)


def apns_path(token: str = DEVICE_TOKEN) -> str:
    return f"/3/device/{token}"


class TestTransport:
    def test_negotiates_http2_and_advertises_many_streams(self, simulator: SimulatorHandle) -> None:
        context = simulator.ssl_context()
        context.set_alpn_protocols(["h2", "http/1.1"])
        port = httpx.URL(simulator.base_url).port
        assert port is not None
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.selected_alpn_protocol() == "h2"
            connection = h2.connection.H2Connection()
            connection.initiate_connection()
            tls.sendall(connection.data_to_send())
            advertised: dict[int, int] = {}
            while not advertised:
                for event in connection.receive_data(tls.recv(65536)):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        advertised = {k: v.new_value for k, v in event.changed_settings.items()}
        assert advertised[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] > 100

    def test_falls_back_to_http1(self, control: httpx.Client, apns_key: ApnsKey) -> None:
        answer = control.post(apns_path(), headers=apns_key.headers(), json=APNS_BODY)
        assert answer.http_version == "HTTP/1.1"
        assert answer.status_code == 200


class TestApns:
    def test_accepts_a_signed_push(
        self, h2_client: httpx.Client, control: httpx.Client, apns_key: ApnsKey
    ) -> None:
        answer = h2_client.post(apns_path(), headers=apns_key.headers(), json=APNS_BODY)
        assert answer.http_version == "HTTP/2"
        assert answer.status_code == 200
        assert answer.headers["apns-id"]
        assert answer.content == b""
        received = control.get(f"/_sim/apns/tokens/{DEVICE_TOKEN}").json()
        assert received["count"] == 1
        assert received["messages"][0]["payload"] == APNS_BODY
        assert received["messages"][0]["headers"]["apns-topic"] == "com.example.app"
        stats = control.get("/_sim/stats").json()["apns"]
        assert stats == {"requests": 1, "accepted": 1, "rejected": 0}

    def test_echoes_the_callers_apns_id(self, h2_client: httpx.Client, apns_key: ApnsKey) -> None:
        apns_id = "3a8e7c4e-6b1f-4f0e-9a3b-0c2d7e5f1a2b"
        headers = apns_key.headers(**{"apns-id": apns_id})
        assert (
            h2_client.post(apns_path(), headers=headers, json=APNS_BODY).headers["apns-id"]
            == apns_id
        )

    def test_rejects_a_bad_signature(self, h2_client: httpx.Client, apns_key: ApnsKey) -> None:
        forged = ApnsKey(
            apns_key.key_id, apns_key.team_id, private_pem(ec.generate_private_key(ec.SECP256R1()))
        )
        headers = apns_key.headers() | {"authorization": f"bearer {forged.token()}"}
        answer = h2_client.post(apns_path(), headers=headers, json=APNS_BODY)
        assert (answer.status_code, answer.json()) == (403, {"reason": "InvalidProviderToken"})

    def test_rejects_an_unknown_key(self, h2_client: httpx.Client, apns_key: ApnsKey) -> None:
        token = apns_key.token(kid="UNKNOWN123")
        headers = apns_key.headers() | {"authorization": f"bearer {token}"}
        answer = h2_client.post(apns_path(), headers=headers, json=APNS_BODY)
        assert (answer.status_code, answer.json()) == (403, {"reason": "InvalidProviderToken"})

    def test_rejects_a_stale_token(self, h2_client: httpx.Client, apns_key: ApnsKey) -> None:
        token = apns_key.token(iat=int(time.time()) - 3601)
        headers = apns_key.headers() | {"authorization": f"bearer {token}"}
        answer = h2_client.post(apns_path(), headers=headers, json=APNS_BODY)
        assert (answer.status_code, answer.json()) == (403, {"reason": "ExpiredProviderToken"})

    def test_requires_a_provider_token(self, h2_client: httpx.Client) -> None:
        answer = h2_client.post(
            apns_path(), headers={"apns-topic": "com.example.app"}, json=APNS_BODY
        )
        assert (answer.status_code, answer.json()) == (403, {"reason": "MissingProviderToken"})

    @pytest.mark.parametrize(
        ("path", "headers", "status", "reason"),
        [
            (apns_path(), {"apns-topic": None}, 400, "MissingTopic"),
            (apns_path(), {"apns-topic": "com.other.app"}, 400, "TopicDisallowed"),
            (apns_path("abc123"), {}, 400, "BadDeviceToken"),
            (apns_path("zz" * 32), {}, 400, "BadDeviceToken"),
            (apns_path(), {"apns-push-type": "shout"}, 400, "InvalidPushType"),
            (apns_path(), {"apns-priority": "7"}, 400, "BadPriority"),
        ],
    )
    def test_rejects_malformed_requests(
        self,
        h2_client: httpx.Client,
        apns_key: ApnsKey,
        path: str,
        headers: dict[str, str | None],
        status: int,
        reason: str,
    ) -> None:
        merged = apns_key.headers() | headers
        sent = {k: v for k, v in merged.items() if v is not None}
        answer = h2_client.post(path, headers=sent, json=APNS_BODY)
        assert (answer.status_code, answer.json()["reason"]) == (status, reason)

    def test_needs_a_post_with_a_body(self, h2_client: httpx.Client, apns_key: ApnsKey) -> None:
        answer = h2_client.get(apns_path(), headers=apns_key.headers())
        assert (answer.status_code, answer.json()["reason"]) == (405, "MethodNotAllowed")
        answer = h2_client.post(apns_path(), headers=apns_key.headers(), content=b"")
        assert (answer.status_code, answer.json()["reason"]) == (400, "PayloadEmpty")

    def test_accepts_topic_suffixes_of_a_listed_bundle(
        self, h2_client: httpx.Client, apns_key: ApnsKey
    ) -> None:
        headers = apns_key.headers("com.example.app.voip", **{"apns-push-type": "voip"})
        assert h2_client.post(apns_path(), headers=headers, json=APNS_BODY).status_code == 200

    def test_rejects_oversized_payloads(self, h2_client: httpx.Client, apns_key: ApnsKey) -> None:
        body = {"aps": {"alert": "x" * 4100}}
        answer = h2_client.post(apns_path(), headers=apns_key.headers(), json=body)
        assert (answer.status_code, answer.json()["reason"]) == (413, "PayloadTooLarge")

    def test_uninstalled_token_is_unregistered(
        self, h2_client: httpx.Client, control: httpx.Client, apns_key: ApnsKey
    ) -> None:
        before = int(time.time() * 1000)
        control.post(f"/_sim/apns/tokens/{DEVICE_TOKEN}/uninstall").raise_for_status()
        answer = h2_client.post(apns_path(), headers=apns_key.headers(), json=APNS_BODY)
        assert answer.status_code == 410
        assert answer.json()["reason"] == "Unregistered"
        assert before <= answer.json()["timestamp"] <= int(time.time() * 1000)

    def test_forced_failures_then_success(
        self, h2_client: httpx.Client, control: httpx.Client, apns_key: ApnsKey
    ) -> None:
        control.post(
            f"/_sim/apns/tokens/{DEVICE_TOKEN}/fail", json={"status": 503, "count": 2}
        ).raise_for_status()
        statuses = [
            h2_client.post(apns_path(), headers=apns_key.headers(), json=APNS_BODY)
            for _ in range(3)
        ]
        assert [a.status_code for a in statuses] == [503, 503, 200]
        assert statuses[0].json() == {"reason": "ServiceUnavailable"}
        assert control.get("/_sim/stats").json()["apns"]["rejected"] == 2

    def test_forced_failures_keep_what_was_refused(
        self, h2_client: httpx.Client, control: httpx.Client, apns_key: ApnsKey
    ) -> None:
        control.post(
            f"/_sim/apns/tokens/{DEVICE_TOKEN}/fail", json={"status": 429}
        ).raise_for_status()
        for apns_id in ("refused-id", "accepted-id"):
            h2_client.post(
                apns_path(), headers=apns_key.headers(**{"apns-id": apns_id}), json=APNS_BODY
            )
        log = control.get(f"/_sim/apns/tokens/{DEVICE_TOKEN}").json()
        assert log["count"] == 1  # accepted only
        [refused] = log["refused"]
        assert refused["headers"]["apns-id"] == "refused-id"
        assert refused["payload"] == APNS_BODY
        assert log["messages"][-1]["headers"]["apns-id"] == "accepted-id"

    @pytest.mark.parametrize(
        ("status", "reason"),
        [(429, "TooManyRequests"), (500, "InternalServerError"), (503, "ServiceUnavailable")],
    )
    def test_random_faults(
        self,
        h2_client: httpx.Client,
        control: httpx.Client,
        apns_key: ApnsKey,
        status: int,
        reason: str,
    ) -> None:
        control.put("/_sim/apns/faults", json={"rates": {str(status): 1.0}}).raise_for_status()
        answer = h2_client.post(apns_path(), headers=apns_key.headers(), json=APNS_BODY)
        assert (answer.status_code, answer.json()) == (status, {"reason": reason})
        control.put("/_sim/apns/faults", json={"rates": {}}).raise_for_status()
        assert (
            h2_client.post(apns_path(), headers=apns_key.headers(), json=APNS_BODY).status_code
            == 200
        )

    def test_keeps_the_last_ten_messages(
        self, h2_client: httpx.Client, control: httpx.Client, apns_key: ApnsKey
    ) -> None:
        for n in range(12):
            body = {"aps": {"alert": str(n)}}
            assert (
                h2_client.post(apns_path(), headers=apns_key.headers(), json=body).status_code
                == 200
            )
        received = control.get(f"/_sim/apns/tokens/{DEVICE_TOKEN}").json()
        assert received["count"] == 12
        assert [m["payload"]["aps"]["alert"] for m in received["messages"]] == [
            str(n) for n in range(2, 12)
        ]

    def test_counts_tokens_and_repeats_past_the_tracked_logs(
        self, h2_client: httpx.Client, control: httpx.Client, apns_key: ApnsKey
    ) -> None:
        other = "cd" * 32
        for token in (DEVICE_TOKEN, other, DEVICE_TOKEN):
            answer = h2_client.post(apns_path(token), headers=apns_key.headers(), json=APNS_BODY)
            assert answer.status_code == 200
        control.post(f"/_sim/apns/tokens/{other}/fail", json={"status": 503}).raise_for_status()
        assert (
            h2_client.post(apns_path(other), headers=apns_key.headers(), json=APNS_BODY)
        ).status_code == 503
        deliveries = control.get("/_sim/apns/deliveries").json()
        assert deliveries["tokens"] == 2
        assert deliveries["repeated"] == 1  # the refused push is not a delivery
        assert sum(count for _at, count in deliveries["arrivals"]) == 3
        assert all(abs(at - time.time()) < 60 for at, _count in deliveries["arrivals"])


def _fcm_error(answer: httpx.Response) -> tuple[int, str, str | None]:
    error = answer.json()["error"]
    details = error.get("details") or [{}]
    return error["code"], error["status"], details[0].get("errorCode")


class TestFcm:
    def test_sends_with_an_access_token(
        self, h2_client: httpx.Client, control: httpx.Client, fcm_project: FcmProject
    ) -> None:
        message = {"message": {"token": "fcm-token-1", "notification": {"title": "Hi"}}}
        answer = h2_client.post(fcm_project.send_path, headers=fcm_project.auth, json=message)
        assert answer.status_code == 200
        project_id = fcm_project.account["project_id"]
        assert answer.json()["name"].startswith(f"projects/{project_id}/messages/")
        received = control.get("/_sim/fcm/tokens/fcm-token-1").json()
        assert received["count"] == 1
        assert received["messages"][0]["payload"] == message

    def test_token_endpoint_refuses_bad_assertions(
        self, h2_client: httpx.Client, fcm_project: FcmProject
    ) -> None:
        account = fcm_project.account
        now = int(time.time())
        for assertion in [
            service_account_assertion(account, scope="https://www.googleapis.com/auth/email"),
            service_account_assertion(account, aud="https://elsewhere.example/token"),
            service_account_assertion(account, iat=now, exp=now + 7200),
            service_account_assertion(
                account
                | {
                    "private_key": private_pem(
                        rsa.generate_private_key(public_exponent=65537, key_size=2048)
                    )
                }
            ),
        ]:
            answer = h2_client.post(
                "/token", data={"grant_type": JWT_BEARER, "assertion": assertion}
            )
            assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant")

    def test_unregistered_after_uninstall(
        self, h2_client: httpx.Client, control: httpx.Client, fcm_project: FcmProject
    ) -> None:
        control.post("/_sim/fcm/tokens/gone-token/uninstall").raise_for_status()
        message = {"message": {"token": "gone-token", "data": {"k": "v"}}}
        answer = h2_client.post(fcm_project.send_path, headers=fcm_project.auth, json=message)
        assert _fcm_error(answer) == (404, "NOT_FOUND", "UNREGISTERED")

    def test_unknown_access_token_is_unauthenticated(
        self, h2_client: httpx.Client, fcm_project: FcmProject
    ) -> None:
        message = {"message": {"token": "fcm-token-1"}}
        headers = {"authorization": "Bearer ya29.not-issued"}
        answer = h2_client.post(fcm_project.send_path, headers=headers, json=message)
        assert _fcm_error(answer)[:2] == (401, "UNAUTHENTICATED")

    def test_other_project_is_a_sender_id_mismatch(
        self, h2_client: httpx.Client, fcm_project: FcmProject
    ) -> None:
        message = {"message": {"token": "fcm-token-1"}}
        path = "/v1/projects/someone-else/messages:send"
        answer = h2_client.post(path, headers=fcm_project.auth, json=message)
        assert _fcm_error(answer) == (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH")

    @pytest.mark.parametrize(
        "body", [{"message": {}}, {"message": {"token": "has spaces"}}, {"nothing": 1}]
    )
    def test_malformed_message_is_invalid_argument(
        self, h2_client: httpx.Client, fcm_project: FcmProject, body: dict[str, object]
    ) -> None:
        answer = h2_client.post(fcm_project.send_path, headers=fcm_project.auth, json=body)
        assert _fcm_error(answer) == (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")

    def test_quota_exceeded_says_when_to_retry(
        self, h2_client: httpx.Client, control: httpx.Client, fcm_project: FcmProject
    ) -> None:
        control.put("/_sim/fcm/faults", json={"rates": {"429": 1.0}}).raise_for_status()
        message = {"message": {"token": "fcm-token-1"}}
        answer = h2_client.post(fcm_project.send_path, headers=fcm_project.auth, json=message)
        assert _fcm_error(answer) == (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
        assert answer.headers["retry-after"] == "1"

    def test_forced_failure_carries_its_retry_after(
        self, h2_client: httpx.Client, control: httpx.Client, fcm_project: FcmProject
    ) -> None:
        control.post(
            "/_sim/fcm/tokens/fcm-token-2/fail", json={"status": 503, "retry_after": 7}
        ).raise_for_status()
        message = {"message": {"token": "fcm-token-2"}}
        answer = h2_client.post(fcm_project.send_path, headers=fcm_project.auth, json=message)
        assert _fcm_error(answer) == (503, "UNAVAILABLE", "UNAVAILABLE")
        assert answer.headers["retry-after"] == "7"
        again = h2_client.post(fcm_project.send_path, headers=fcm_project.auth, json=message)
        assert again.status_code == 200


def _origin(endpoint: str) -> str:
    url = httpx.URL(endpoint)
    return f"{url.scheme}://{url.host}:{url.port}"


def _encrypt(sender: WebPushSender, payload: bytes) -> bytes:
    encrypted: bytes = http_ece.encrypt(
        payload,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=b64url_decode(sender.p256dh),
        auth_secret=b64url_decode(sender.auth),
        version="aes128gcm",
    )
    return encrypted


def _vapid_headers(sender: WebPushSender) -> dict[str, str]:
    vapid = Vapid02.from_pem(sender.vapid_private_pem)
    claims = {"aud": _origin(sender.endpoint), "sub": "mailto:ops@example.com"}
    signed: dict[str, str] = vapid.sign(claims)
    return {"authorization": signed["Authorization"], "ttl": "60", "content-encoding": "aes128gcm"}


class TestWebPush:
    def test_decrypts_what_it_receives(
        self, h2_client: httpx.Client, control: httpx.Client, webpush_sender: WebPushSender
    ) -> None:
        body = _encrypt(webpush_sender, b'{"title": "Hello", "body": "from Clarion"}')
        answer = h2_client.post(
            webpush_sender.endpoint,
            headers=_vapid_headers(webpush_sender) | {"urgency": "high", "topic": "news"},
            content=body,
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["location"].startswith(webpush_sender.endpoint)
        received = control.get(f"/_sim/webpush/tokens/{webpush_sender.subscription_id}").json()
        assert received["count"] == 1
        assert received["messages"][0]["payload"] == {"title": "Hello", "body": "from Clarion"}

    def test_rejects_another_vapid_key(
        self, h2_client: httpx.Client, webpush_sender: WebPushSender
    ) -> None:
        stranger = WebPushSender(
            ec.generate_private_key(ec.SECP256R1()),
            webpush_sender.endpoint,
            webpush_sender.p256dh,
            webpush_sender.auth,
        )
        body = _encrypt(webpush_sender, b"{}")
        answer = h2_client.post(
            webpush_sender.endpoint, headers=_vapid_headers(stranger), content=body
        )
        assert answer.status_code == 403

    def test_rejects_a_vapid_token_for_another_origin(
        self, h2_client: httpx.Client, webpush_sender: WebPushSender
    ) -> None:
        token = jwt.encode(
            {"aud": "https://push.example", "exp": int(time.time()) + 600, "sub": "mailto:a@b.c"},
            webpush_sender.vapid_private_pem,
            algorithm="ES256",
        )
        key = _vapid_headers(webpush_sender)["authorization"].rsplit("k=", 1)[1]
        headers = _vapid_headers(webpush_sender) | {"authorization": f"vapid t={token}, k={key}"}
        answer = h2_client.post(webpush_sender.endpoint, headers=headers, content=b"x")
        assert answer.status_code == 403

    @pytest.mark.parametrize(
        ("change", "status"),
        [
            ({"ttl": None}, 400),
            ({"content-encoding": "aesgcm"}, 415),
            ({"urgency": "whenever"}, 400),
            ({"topic": "t" * 33}, 400),
            ({"authorization": None}, 401),
        ],
    )
    def test_header_rules(
        self,
        h2_client: httpx.Client,
        webpush_sender: WebPushSender,
        change: dict[str, str | None],
        status: int,
    ) -> None:
        merged = _vapid_headers(webpush_sender) | change
        headers = {k: v for k, v in merged.items() if v is not None}
        body = _encrypt(webpush_sender, b"{}")
        assert (
            h2_client.post(webpush_sender.endpoint, headers=headers, content=body).status_code
            == status
        )

    def test_undecryptable_and_oversized_bodies(
        self, h2_client: httpx.Client, webpush_sender: WebPushSender
    ) -> None:
        headers = _vapid_headers(webpush_sender)
        garbage = h2_client.post(webpush_sender.endpoint, headers=headers, content=b"\x00" * 100)
        assert garbage.status_code == 400
        big = h2_client.post(webpush_sender.endpoint, headers=headers, content=b"\x00" * 4097)
        assert big.status_code == 413

    def test_gone_after_uninstall(
        self, h2_client: httpx.Client, control: httpx.Client, webpush_sender: WebPushSender
    ) -> None:
        subscription = webpush_sender.subscription_id
        control.post(f"/_sim/webpush/tokens/{subscription}/uninstall").raise_for_status()
        body = _encrypt(webpush_sender, b"{}")
        answer = h2_client.post(
            webpush_sender.endpoint, headers=_vapid_headers(webpush_sender), content=body
        )
        assert answer.status_code == 410

    def test_unknown_subscription(
        self, h2_client: httpx.Client, simulator: SimulatorHandle
    ) -> None:
        assert h2_client.post("/wp/nobody", content=b"x").status_code == 404

    def test_random_429_says_when_to_retry(
        self, h2_client: httpx.Client, control: httpx.Client, webpush_sender: WebPushSender
    ) -> None:
        control.put("/_sim/webpush/faults", json={"rates": {"429": 1.0}}).raise_for_status()
        body = _encrypt(webpush_sender, b"{}")
        answer = h2_client.post(
            webpush_sender.endpoint, headers=_vapid_headers(webpush_sender), content=body
        )
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "1"


class TestControlApi:
    def test_rejects_bad_input(self, control: httpx.Client) -> None:
        assert control.post("/_sim/apns/tokens/x/fail", json={"status": 200}).status_code == 400
        assert control.put("/_sim/fcm/faults", json={"rates": {"429": 2}}).status_code == 400
        assert control.post("/_sim/webpush/subscriptions", json={}).status_code == 400
        assert control.post("/_sim/apns/keys", content=b"{not json").status_code == 400
        assert control.get("/_sim/nothing-here").status_code == 404

    def test_reset_forgets_messages_and_dead_tokens(
        self, h2_client: httpx.Client, control: httpx.Client, apns_key: ApnsKey
    ) -> None:
        h2_client.post(apns_path(), headers=apns_key.headers(), json=APNS_BODY)
        control.post(f"/_sim/apns/tokens/{DEVICE_TOKEN}/uninstall").raise_for_status()
        control.post("/_sim/reset").raise_for_status()
        assert control.get(f"/_sim/apns/tokens/{DEVICE_TOKEN}").json() == {
            "count": 0,
            "messages": [],
            "refused": [],
        }
        assert (
            h2_client.post(apns_path(), headers=apns_key.headers(), json=APNS_BODY).status_code
            == 200
        )


def test_registry_survives_a_restart(tmp_path: Path) -> None:
    with running_simulator(tmp_path) as first, first.control_client() as control:
        body = control.post("/_sim/apns/keys", json={}).json()
        account = control.post("/_sim/fcm/service-accounts", json={}).json()
        sender = subscribe(control)
    ca = (tmp_path / "ca.pem").read_bytes()
    key = ApnsKey(body["key_id"], body["team_id"], body["private_key_pem"])
    with running_simulator(tmp_path) as second, second.control_client(http2=True) as client:
        assert (tmp_path / "ca.pem").read_bytes() == ca
        answer = client.post(apns_path(), headers=key.headers("any.topic"), json=APNS_BODY)
        assert answer.status_code == 200, answer.text
        # The account's token_uri names the first run's port; the new origin is accepted.
        assertion = service_account_assertion(account, aud=f"{second.base_url}/token")
        grant = client.post("/token", data={"grant_type": JWT_BEARER, "assertion": assertion})
        assert grant.status_code == 200, grant.text
        moved = replace(sender, endpoint=f"{second.base_url}/wp/{sender.subscription_id}")
        pushed = client.post(
            moved.endpoint, headers=_vapid_headers(moved), content=_encrypt(moved, b'"hi"')
        )
        assert pushed.status_code == 201, pushed.text
        received = client.get(f"/_sim/webpush/tokens/{sender.subscription_id}").json()
        assert received["messages"][0]["payload"] == "hi"
