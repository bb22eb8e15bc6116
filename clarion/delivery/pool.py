"""One provider per app (and APNs environment), built on first use and kept for the process.

Providers hold warm state worth keeping: a signed APNs JWT, an FCM access token, VAPID headers.
All of them share the process's single HTTP/2 client, so connections stay long-lived.
"""

from __future__ import annotations

import dataclasses

from clarion.apps.models import App
from clarion.apps.service import load_provider_credentials
from clarion.config import Settings
from clarion.delivery.providers import ApnsProvider, FcmProvider, WebPushProvider
from clarion.delivery.providers.base import (
    ApnsCredentials,
    FcmCredentials,
    Provider,
    WebPushCredentials,
)
from clarion.http2 import Http2Client
from clarion.outbound import OutboundPolicy
from clarion.security import SecretBox


def provider_client(settings: Settings) -> Http2Client:
    """The process's HTTP/2 client for the providers, with the operator's timeouts."""
    return Http2Client(
        ca_file=settings.provider_ca_file or None,
        connect_timeout=settings.provider_connect_timeout_seconds,
        tls_timeout=settings.provider_tls_timeout_seconds,
        response_timeout=settings.provider_response_timeout_seconds,
    )


class ProviderPool:
    def __init__(self, client: Http2Client, settings: Settings, box: SecretBox) -> None:
        self._client = client
        self._settings = settings
        self._box = box
        self._outbound = OutboundPolicy.from_settings(settings)
        # Keyed by the encrypted credentials too: new credentials make a new provider.
        self._providers: dict[tuple[int, str, bool], Provider] = {}

    def provider_for(self, app: App, *, sandbox: bool) -> Provider | None:
        """The app's provider, or None when its credentials were never set."""
        sandbox = sandbox and app.platform == "ios"  # only APNs has two environments
        stored = {"ios": app.apns_credentials, "android": app.fcm_credentials}.get(
            app.platform, app.webpush_credentials
        )
        if stored is None:
            return None
        key = (app.id, stored, sandbox)
        provider = self._providers.get(key)
        if provider is None:
            provider = self._build(app, sandbox=sandbox)
            if provider is None:
                return None
            self._providers[key] = provider
        return provider

    def _build(self, app: App, *, sandbox: bool) -> Provider | None:
        credentials = load_provider_credentials(app, self._box)
        if isinstance(credentials, ApnsCredentials):
            if sandbox:
                credentials = dataclasses.replace(credentials, sandbox=True)
            return ApnsProvider(
                credentials,
                self._client,
                production_url=self._settings.apns_production_url,
                sandbox_url=self._settings.apns_sandbox_url,
            )
        if isinstance(credentials, FcmCredentials):
            return FcmProvider(
                credentials,
                self._client,
                base_url=self._settings.fcm_url,
                outbound=self._outbound,
            )
        if isinstance(credentials, WebPushCredentials):
            return WebPushProvider(credentials, self._client, outbound=self._outbound)
        return None

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()
