"""Dashboard accounts and sessions: sign-in, roles, CSRF tokens. No HTTP here.

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's second recommended
profile); sessions are random tokens stored as SHA-256, like API keys (docs/decisions/0014).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.models import App
from clarion.apps.service import AppAccess, get_company_app, live_access
from clarion.dashboard.models import DashboardSession, DashboardUser, Role, SignInFailure
from clarion.dashboard.schemas import UserCreate
from clarion.errors import (
    ApiMisuseError,
    AuthenticationInvalidError,
    MalformedParameterError,
    NotFoundError,
    TooManyRequestsError,
)
from clarion.security import hash_key

# A session lasts this long from sign-in, however active: a stolen cookie has a bounded life.
SESSION_LIFETIME = timedelta(hours=12)

_hasher = PasswordHasher()
# An Argon2 hash or check takes ~100 ms of CPU and 64 MiB: it runs in a thread, so the event
# loop keeps serving the APIs, and at most two run at once, so sign-ins cannot exhaust memory.
_ARGON2_SLOTS = asyncio.Semaphore(2)


# Failed sign-ins are counted twice, and either count over its limit refuses the sign-in (429)
# until its oldest failure is older than the window:
# - per (e-mail, client address): a guesser gets 10 tries per account and address in 15 minutes
#   (~1,000 a day), while the account's owner, signing in from elsewhere, is not locked out;
# - per client address, whatever the e-mails: one address spraying a few passwords over many
#   accounts stops after 30 tries in 15 minutes (~2,900 a day in all, not per account), where a
#   team of 10 behind one NAT, each mistyping twice in the window, stays well under it.
# No count is kept per e-mail alone: that one let anyone lock an admin out with 10 wrong
# passwords. The failures are rows (SignInFailure), so every process serving the dashboard
# counts the same tries.
SIGN_IN_LIMIT = 10
SIGN_IN_CLIENT_LIMIT = 30
SIGN_IN_WINDOW = timedelta(minutes=15)
# One end user is handed a whole IPv6 /64 (RFC 6177) and picks any address in it at will, so an
# IPv6 client is counted by its /64; an IPv4 address, by itself.
_IPV6_CLIENT_PREFIX = 64
_CLIENT_CHARS = 64  # SignInFailure.client's length
_EMAIL_CHARS = 254  # DashboardUser.email's length (RFC 5321's longest path)


def client_address(host: str | None) -> str:
    """What the throttle counts a client by, from the address uvicorn gives the request (the
    peer's, or the one a trusted proxy forwarded: docs/dashboard.md)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:_CLIENT_CHARS]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


async def _check_sign_in_throttle(
    session: AsyncSession, email: str, client: str, now: datetime
) -> None:
    recent = SignInFailure.failed_at > now - SIGN_IN_WINDOW
    by_client = SignInFailure.client == client
    row = (
        await session.execute(
            select(
                func.count().filter(SignInFailure.email == email),
                func.count(),
            ).where(by_client, recent)
        )
    ).one()
    for_account, from_client = int(row[0] or 0), int(row[1] or 0)
    if for_account >= SIGN_IN_LIMIT:
        raise TooManyRequestsError(
            "too many failed sign-ins for this e-mail from your address: wait and retry"
        )
    if from_client >= SIGN_IN_CLIENT_LIMIT:
        raise TooManyRequestsError("too many failed sign-ins from your address: wait and retry")


async def _record_sign_in_failure(
    session: AsyncSession, email: str, client: str, now: datetime
) -> None:
    session.add(SignInFailure(email=email, client=client, failed_at=now))
    # Failures that aged out are removed here rather than by a periodic job.
    await session.execute(
        delete(SignInFailure).where(SignInFailure.failed_at <= now - SIGN_IN_WINDOW)
    )


_dummy: list[str] = []


async def _dummy_hash() -> str:
    """Verified against when the e-mail is unknown, so that a wrong e-mail costs as much time
    as a wrong password and sign-in does not reveal which accounts exist. Made at the first
    such sign-in, not at import: an Argon2 hash is ~100 ms that every process start would pay."""
    if not _dummy:
        _dummy.append(await _hash(secrets.token_urlsafe(16)))
    return _dummy[0]


async def _hash(password: str) -> str:
    async with _ARGON2_SLOTS:
        return await asyncio.to_thread(_hasher.hash, password)


async def _verify(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async with _ARGON2_SLOTS:
        return await asyncio.to_thread(verify)


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person a page is rendered for."""

    user_id: int
    company_id: int
    email: str
    role: Role
    csrf_token: str

    @property
    def can_edit(self) -> bool:
        return self.role in (Role.ADMIN, Role.EDITOR)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def require_editor(viewer: Viewer) -> None:
    if not viewer.can_edit:
        raise ApiMisuseError("your role (viewer) cannot change anything")


def require_admin(viewer: Viewer) -> None:
    if not viewer.is_admin:
        raise ApiMisuseError(f"only an admin can do this (your role: {viewer.role.value})")


async def create_user(
    session: AsyncSession, *, company_id: int, user_in: UserCreate, now: datetime
) -> DashboardUser:
    email = user_in.email.lower()
    taken = await session.scalar(select(DashboardUser.id).where(DashboardUser.email == email))
    if taken is not None:
        raise MalformedParameterError(f"email: an account for {email!r} exists already")
    user = DashboardUser(
        company_id=company_id,
        email=email,
        name=user_in.name,
        password_hash=await _hash(user_in.password.get_secret_value()),
        role=user_in.role.value,
        created_at=now,
    )
    session.add(user)
    await session.flush()
    return user


async def change_user(
    session: AsyncSession, viewer: Viewer, *, user_id: int, role: Role, disabled: bool
) -> DashboardUser:
    """An admin sets another person's role, or disables their account (and so ends their
    sessions) or enables it again. Not their own: an admin who demoted or disabled themselves
    could leave the company without an admin, so that takes another admin."""
    require_admin(viewer)
    if user_id == viewer.user_id:
        raise ApiMisuseError("you cannot change your own account; another admin can")
    user = await session.scalar(
        select(DashboardUser).where(
            DashboardUser.id == user_id, DashboardUser.company_id == viewer.company_id
        )
    )
    if user is None:
        raise NotFoundError(f"no team member {user_id}")
    user.role = role.value
    user.disabled = disabled
    if disabled:
        await session.execute(delete(DashboardSession).where(DashboardSession.user_id == user.id))
    await session.flush()
    return user


async def list_users(session: AsyncSession, *, company_id: int) -> list[DashboardUser]:
    users = await session.scalars(
        select(DashboardUser)
        .where(DashboardUser.company_id == company_id)
        .order_by(DashboardUser.email)
    )
    return list(users)


async def sign_in(
    session: AsyncSession, *, email: str, password: str, client: str, now: datetime
) -> tuple[str, Viewer]:
    """Check the password and open a session; returns the cookie's token (shown once).
    `client`: the caller's address as client_address gives it.

    A wrong password is recorded in `session` before AuthenticationInvalidError is raised: the
    caller commits it (the dashboard's route answers the error as a page, and commits), or the
    throttle does not count it."""
    email = email.strip().lower()
    # No account has a longer e-mail or a NUL in it (which PostgreSQL cannot store): such an
    # e-mail is an unknown one, counted under what can be stored of it.
    storable = len(email) <= _EMAIL_CHARS and "\x00" not in email
    if not storable:
        email = email.replace("\x00", "")[:_EMAIL_CHARS]
    await _check_sign_in_throttle(session, email, client, now)
    user = (
        await session.scalar(select(DashboardUser).where(DashboardUser.email == email))
        if storable
        else None
    )
    valid = await _verify(user.password_hash if user else await _dummy_hash(), password)
    # Tries sent at once all pass the check above before the first of them is recorded (on
    # PostgreSQL: 30 tries at once from one address got 30 answers). Checked again once the
    # password is, when the tries verified before this one (Argon2 takes ~100 ms, two at a
    # time) have been recorded: past the limit, right and wrong passwords get the same 429.
    await _check_sign_in_throttle(session, email, client, now)
    if user is None or user.disabled or not valid:
        await _record_sign_in_failure(session, email, client, now)
        raise AuthenticationInvalidError("wrong e-mail or password")
    # Only this address's failures for the account are forgiven: a success elsewhere must not
    # clear what a guesser at another address has used up.
    await session.execute(
        delete(SignInFailure).where(SignInFailure.email == email, SignInFailure.client == client)
    )
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = await _hash(password)
    user.last_sign_in_at = now
    token = secrets.token_urlsafe(32)
    record = DashboardSession(
        token_hash=hash_key(token),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + SESSION_LIFETIME,
    )
    session.add(record)
    # Sessions that ran out are removed here rather than by a periodic job.
    await session.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))
    await session.flush()
    return token, _viewer(user, record)


async def viewer_of(session: AsyncSession, *, token: str | None, now: datetime) -> Viewer | None:
    """The person behind a session cookie, or None when it is missing, unknown or expired."""
    if not token:
        return None
    row = (
        await session.execute(
            select(DashboardUser, DashboardSession)
            .join(DashboardSession, DashboardSession.user_id == DashboardUser.id)
            .where(DashboardSession.token_hash == hash_key(token))
        )
    ).one_or_none()
    if row is None:
        return None
    user, record = row
    if record.expires_at <= now or user.disabled:
        return None
    return _viewer(user, record)


async def sign_out(session: AsyncSession, *, token: str) -> None:
    await session.execute(
        delete(DashboardSession).where(DashboardSession.token_hash == hash_key(token))
    )


def csrf_matches(viewer: Viewer, sent: str | None) -> bool:
    return tokens_match(viewer.csrf_token, sent)


def tokens_match(expected: str, sent: str | None) -> bool:
    """Constant-time comparison that takes any text (compare_digest refuses non-ASCII str)."""
    return (
        bool(expected)
        and sent is not None
        and hmac.compare_digest(expected.encode(), sent.encode())
    )


async def company_app(session: AsyncSession, viewer: Viewer, app_id: int) -> tuple[App, AppAccess]:
    """An app of the viewer's company (404 otherwise), and the Live access the services take:
    the dashboard acts with the app's full rights, as Batch's dashboard does."""
    app = await get_company_app(session, company_id=viewer.company_id, app_id=app_id)
    return app, live_access(app)


def _viewer(user: DashboardUser, record: DashboardSession) -> Viewer:
    return Viewer(
        user_id=user.id,
        company_id=user.company_id,
        email=user.email,
        role=Role(user.role),
        csrf_token=record.csrf_token,
    )
