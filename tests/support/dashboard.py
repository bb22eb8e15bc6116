"""Signing in to the dashboard from a test: an account of the app's company, and its session."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from clarion.apps.models import App
from clarion.dashboard import service
from clarion.dashboard.models import Role
from clarion.dashboard.schemas import UserCreate
from clarion.dashboard.web import SESSION_COOKIE
from clarion.db import transaction, utcnow
from clarion.runtime import Runtime

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class DashboardLogin:
    email: str
    token: str  # the session cookie's value
    csrf: str  # what every POST of this session must carry
    company_id: int

    def use(self, client: httpx.AsyncClient) -> httpx.AsyncClient:
        client.cookies.set(SESSION_COOKIE, self.token)
        return client


async def create_account(runtime: Runtime, *, company_id: int, role: Role) -> str:
    email = f"{role.value}-{secrets.token_hex(4)}@example.com"
    async with transaction(runtime.sessions) as session:
        await service.create_user(
            session,
            company_id=company_id,
            user_in=UserCreate.model_validate({"email": email, "password": PASSWORD, "role": role}),
            now=utcnow(),
        )
    return email


async def sign_in_as(runtime: Runtime, *, app_id: int, role: Role) -> DashboardLogin:
    """A new account of the company that owns `app_id`, signed in through the service."""
    async with runtime.sessions() as session:
        company_id = await session.scalar(select(App.company_id).where(App.id == app_id))
    assert company_id is not None
    email = await create_account(runtime, company_id=company_id, role=role)
    async with transaction(runtime.sessions) as session:
        token, viewer = await service.sign_in(
            session, email=email, password=PASSWORD, client="test", now=utcnow()
        )
    return DashboardLogin(email, token, viewer.csrf_token, company_id)


def new_client_address() -> str:
    """An address of its own (in 10.0.0.0/8) for a test that fails sign-ins: the throttle counts
    failures per address in the session's database, so tests sharing one would add up."""
    return str(ipaddress.IPv4Address(0x0A00_0000 + secrets.randbelow(1 << 24)))


@asynccontextmanager
async def client_at(
    app: FastAPI | Callable[..., Awaitable[None]],
    address: str,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the dashboard whose requests come from `address`, as uvicorn would pass it."""
    transport = httpx.ASGITransport(app=app, client=(address, 50_000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://clarion.test", headers=headers
    ) as client:
        yield client


async def form_sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    """Signs in through the form, as a browser does: the form first, for its CSRF token."""
    client.cookies.clear()
    form = await client.get("/dashboard/login")
    found = re.search(r'name="csrf_token" value="([^"]*)"', form.text)
    assert found is not None, "no csrf_token field"
    return await client.post(
        "/dashboard/login",
        data={"email": email, "password": password, "csrf_token": found.group(1)},
    )
