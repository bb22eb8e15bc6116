"""Companies, apps, API keys and provider credentials."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.models import App, Company
from clarion.apps.schemas import (
    ApnsCredentialsIn,
    AppCreate,
    AppCreated,
    AppKeys,
    AppRead,
    FcmCredentialsIn,
    WebPushCredentialsIn,
)
from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.delivery.providers.base import ApnsCredentials, FcmCredentials, WebPushCredentials
from clarion.errors import (
    ApiMisuseError,
    AuthenticationInvalidError,
    MalformedParameterError,
    NotFoundError,
)
from clarion.security import SecretBox, hash_key, new_dev_key, new_live_key, new_rest_key

DEFAULT_VAPID_SUBJECT = "mailto:push@clarion.invalid"
FCM_REQUIRED_FIELDS = ("project_id", "private_key", "client_email", "token_uri")


@dataclass(frozen=True, slots=True)
class CompanyAccess:
    """A company reached through its REST key."""

    id: int


@dataclass(frozen=True, slots=True)
class AppAccess:
    """An app reached through one of its keys; the Dev key limits a call to dev installs.

    A snapshot of what the API needs, not the ORM row, so that it can be cached (KeyCache).
    """

    app_id: int
    company_id: int
    platform: str
    vapid_public_key: str | None
    is_dev: bool
    # The web pages that may call the SDK API with the key (checked by clarion.sdk.api.SdkCors).
    allowed_origins: frozenset[str] = frozenset()


def live_access(app: App) -> AppAccess:
    """What a call with the app's Live key is given, for callers that hold the app itself (the
    dashboard, which acts with the app's full rights; benchmarks)."""
    return AppAccess(
        app_id=app.id,
        company_id=app.company_id,
        platform=app.platform,
        vapid_public_key=app.vapid_public_key,
        is_dev=False,
        allowed_origins=frozenset(app.allowed_origins),
    )


def require_live_key(access: AppAccess) -> None:
    """Batch answers a wrong key kind with 403 API_MISUSE (spec §1.3, §2.2)."""
    if access.is_dev:
        raise ApiMisuseError(
            "the Dev API key cannot use this route: it takes the app's Live API key"
        )


class KeyCache:
    """Successful key lookups, kept `ttl` seconds (process-local).

    Every API call authenticates, and the two lookups were a third of a transactional send's
    cost. A rotated key keeps working in other processes for at most `ttl` seconds; in the
    rotating process it stops at once (forget). Failed lookups are not kept, so random keys
    cannot grow the cache.
    """

    def __init__(self, ttl: float, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, CompanyAccess | AppAccess]] = {}

    def app(self, api_key: str) -> AppAccess | None:
        """The app of an app key this process authenticated lately, without the database (the
        SDK API's fast paths): None when the key is not cached, or is a company's."""
        access = self.get(hash_key(api_key))
        return access if isinstance(access, AppAccess) else None

    def get(self, digest: str) -> CompanyAccess | AppAccess | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] < self._clock.monotonic():
            del self._entries[digest]
            return None
        return entry[1]

    def put(self, digest: str, value: CompanyAccess | AppAccess) -> None:
        if self.ttl > 0:
            self._entries[digest] = (self._clock.monotonic() + self.ttl, value)

    def forget(self, *digests: str) -> None:
        for digest in digests:
            self._entries.pop(digest, None)


async def create_company(session: AsyncSession, *, name: str) -> tuple[Company, str]:
    rest_key = new_rest_key()
    company = Company(name=name, rest_key_hash=hash_key(rest_key))
    session.add(company)
    await session.flush()
    return company, rest_key


async def get_sole_company(session: AsyncSession) -> Company | None:
    """The company of a single-tenant installation (the CLI's default)."""
    companies = (await session.scalars(select(Company).limit(2))).all()
    return companies[0] if len(companies) == 1 else None


async def any_company(session: AsyncSession) -> bool:
    return await session.scalar(select(Company.id).limit(1)) is not None


async def create_app(
    session: AsyncSession, *, company_id: int, app_in: AppCreate, box: SecretBox
) -> tuple[App, AppKeys]:
    keys = AppKeys(api_key=new_live_key(), dev_api_key=new_dev_key())
    app = App(
        company_id=company_id,
        name=app_in.name,
        platform=app_in.platform,
        default_timezone=app_in.default_timezone,
        live_key_hash=hash_key(keys.api_key),
        dev_key_hash=hash_key(keys.dev_api_key),
    )
    if app_in.platform == "web":
        _store_vapid_keys(app, ec.generate_private_key(ec.SECP256R1()), DEFAULT_VAPID_SUBJECT, box)
    session.add(app)
    await session.flush()
    return app, keys


async def rotate_app_keys(session: AsyncSession, *, app: App, cache: KeyCache) -> AppKeys:
    keys = AppKeys(api_key=new_live_key(), dev_api_key=new_dev_key())
    cache.forget(app.live_key_hash, app.dev_key_hash)
    app.live_key_hash = hash_key(keys.api_key)
    app.dev_key_hash = hash_key(keys.dev_api_key)
    await session.flush()
    return keys


async def rotate_rest_key(session: AsyncSession, *, company_id: int, cache: KeyCache) -> str:
    """A new REST API key for the company (shown once); the old one stops working."""
    company = await session.get_one(Company, company_id)
    rest_key = new_rest_key()
    cache.forget(company.rest_key_hash)
    company.rest_key_hash = hash_key(rest_key)
    await session.flush()
    return rest_key


def describe_app(app: App, keys: AppKeys | None = None, rest_key: str | None = None) -> AppRead:
    fields = {
        "id": app.id,
        "name": app.name,
        "platform": app.platform,
        "default_timezone": app.default_timezone,
        "vapid_public_key": app.vapid_public_key,
        "has_apns_credentials": app.apns_credentials is not None,
        "has_fcm_credentials": app.fcm_credentials is not None,
        "has_webpush_credentials": app.webpush_credentials is not None,
        "allowed_origins": list(app.allowed_origins),
        "created_at": app.created_at,
    }
    if keys is None:
        return AppRead(**fields)
    return AppCreated(**fields, **keys.model_dump(), rest_api_key=rest_key)


async def authenticate_company(
    sessions: async_sessionmaker[AsyncSession], *, rest_key: str | None, cache: KeyCache
) -> CompanyAccess:
    if not rest_key:
        raise AuthenticationInvalidError("missing X-Authorization header (the REST API key)")
    digest = hash_key(rest_key)
    cached = cache.get(digest)
    if isinstance(cached, CompanyAccess):
        return cached
    async with sessions() as session:
        company_id = await session.scalar(select(Company.id).where(Company.rest_key_hash == digest))
    if company_id is None:
        raise AuthenticationInvalidError("unknown REST API key")
    company = CompanyAccess(id=company_id)
    cache.put(digest, company)
    return company


async def authenticate_app(
    sessions: async_sessionmaker[AsyncSession],
    *,
    api_key: str,
    cache: KeyCache,
    company: CompanyAccess | None = None,
) -> AppAccess:
    """Find the app whose Live or Dev key is `api_key`, within `company` when given.

    An app of another company answers exactly like an unknown key, so keys cannot be probed.
    Lookups use a short session of their own, never the request's: on SQLite's single
    connection, a request session kept open by its lookup would block the send intake's
    group commit.
    """
    digest = hash_key(api_key)
    access = cache.get(digest)
    if not isinstance(access, AppAccess):
        async with sessions() as session:
            result = await session.execute(
                select(
                    App.id,
                    App.company_id,
                    App.platform,
                    App.vapid_public_key,
                    App.dev_key_hash,
                    App.allowed_origins,
                ).where(or_(App.live_key_hash == digest, App.dev_key_hash == digest))
            )
            row = result.first()
        if row is None:
            raise AuthenticationInvalidError("unknown API key")
        access = AppAccess(
            app_id=row.id,
            company_id=row.company_id,
            platform=row.platform,
            vapid_public_key=row.vapid_public_key,
            is_dev=row.dev_key_hash == digest,
            allowed_origins=frozenset(row.allowed_origins),
        )
        cache.put(digest, access)
    if company is not None and access.company_id != company.id:
        raise AuthenticationInvalidError("unknown API key")
    return access


async def get_company_app(session: AsyncSession, *, company_id: int, app_id: int) -> App:
    app = await session.scalar(select(App).where(App.id == app_id, App.company_id == company_id))
    if app is None:
        raise NotFoundError(f"no app {app_id}")
    return app


async def list_company_apps(session: AsyncSession, *, company_id: int) -> list[App]:
    return list(
        await session.scalars(select(App).where(App.company_id == company_id).order_by(App.id))
    )


def set_allowed_origins(app: App, origins: list[str], cache: KeyCache) -> None:
    """Replace the web pages allowed to call the SDK API with the app's key (normalised by
    AllowedOriginsIn). This process sees the change at once; others within the key cache's
    lifetime (CLARION_AUTH_CACHE_SECONDS, 5 s by default)."""
    if app.platform != "web":
        raise MalformedParameterError(
            f"allowed_origins: only web apps are called from web pages; app {app.id} is "
            f"{app.platform}"
        )
    app.allowed_origins = list(dict.fromkeys(origins))
    cache.forget(app.live_key_hash, app.dev_key_hash)


def set_apns_credentials(app: App, creds: ApnsCredentialsIn, box: SecretBox) -> None:
    _require_platform(app, "ios")
    key = _load_private_key(creds.private_key, "private_key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise MalformedParameterError("private_key must be an APNs .p8 key (EC P-256)")
    app.apns_credentials = box.encrypt(orjson.dumps(creds.model_dump()))


def set_fcm_credentials(app: App, creds: FcmCredentialsIn, box: SecretBox) -> None:
    _require_platform(app, "android")
    account = creds.service_account
    missing = [f for f in FCM_REQUIRED_FIELDS if not isinstance(account.get(f), str)]
    if missing:
        raise MalformedParameterError(f"service_account lacks {', '.join(missing)}")
    key = _load_private_key(account["private_key"], "service_account.private_key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise MalformedParameterError("service_account.private_key must be an RSA key")
    app.fcm_credentials = box.encrypt(orjson.dumps(account))


def set_webpush_credentials(app: App, creds: WebPushCredentialsIn, box: SecretBox) -> None:
    _require_platform(app, "web")
    if creds.private_key is not None:
        key = _load_private_key(creds.private_key, "private_key")
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise MalformedParameterError("private_key must be a VAPID key (EC P-256)")
    elif app.webpush_credentials is not None:
        current = orjson.loads(box.decrypt(app.webpush_credentials))
        key = _load_private_key(current["vapid_private_key_pem"], "private_key")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    _store_vapid_keys(app, key, creds.subject, box)


def load_provider_credentials(
    app: App, box: SecretBox
) -> ApnsCredentials | FcmCredentials | WebPushCredentials | None:
    """Decrypted credentials for the app's platform, or None when none were set."""
    if app.platform == "ios" and app.apns_credentials:
        data = orjson.loads(box.decrypt(app.apns_credentials))
        return ApnsCredentials(
            key_id=data["key_id"],
            team_id=data["team_id"],
            private_key_pem=data["private_key"],
            topic=data["topic"],
            sandbox=data["environment"] == "sandbox",
        )
    if app.platform == "android" and app.fcm_credentials:
        return FcmCredentials(service_account=orjson.loads(box.decrypt(app.fcm_credentials)))
    if app.platform == "web" and app.webpush_credentials:
        data = orjson.loads(box.decrypt(app.webpush_credentials))
        return WebPushCredentials(**data)
    return None


def _store_vapid_keys(
    app: App, key: ec.EllipticCurvePrivateKey, subject: str, box: SecretBox
) -> None:
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    app.vapid_public_key = base64.urlsafe_b64encode(public).rstrip(b"=").decode()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    creds = {
        "vapid_private_key_pem": pem,
        "vapid_public_key": app.vapid_public_key,
        "subject": subject,
    }
    app.webpush_credentials = box.encrypt(orjson.dumps(creds))


def _load_private_key(pem: str, field: str) -> object:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise MalformedParameterError(f"{field} is not a PEM private key") from exc


def _require_platform(app: App, platform: str) -> None:
    if app.platform != platform:
        raise MalformedParameterError(
            f"these credentials are for {platform} apps; app {app.id} is {app.platform}"
        )
