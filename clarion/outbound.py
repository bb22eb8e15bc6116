"""Where Clarion may connect on a tenant's behalf: the one outbound policy.

Every destination a tenant (or a browser) chooses goes through it: import sources and export
destinations of every scheme (and an S3 or GCS `endpoint_url`, a service account's
`token_uri`), GDPR callbacks and any later webhook, Web Push subscription endpoints and an FCM
service account's `token_uri`. By default it refuses the addresses that reach the server's own
network rather than the Internet: loopback, private, link-local (cloud metadata), multicast,
unspecified, shared (100.64.0.0/10), reserved and every other non-global range, also written
as IPv4-mapped, 6to4, Teredo or NAT64 IPv6. The operator allows named hosts or networks with
CLARION_OUTBOUND_ALLOW, and plain http:// callbacks with CLARION_OUTBOUND_ALLOW_HTTP.

The address is checked where the socket is opened, on the address actually connected to, so a
host name that resolves (or re-resolves) to a refused address and a redirect to one are refused
as well; see docs/decisions/0017-outbound-policy.md for the hooks of each client. URLs are also
checked when they are given (`url_refusal`), so the API can answer 400 at once where it can
tell.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

if TYPE_CHECKING:
    from clarion.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "CLARION_OUTBOUND_ALLOW"
HTTP_SETTING = "CLARION_OUTBOUND_ALLOW_HTTP"
MAX_NAMES = 4096  # addresses remembered with the name they came from, per guard
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT: not global
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
# The host of the request being made in this task, for refusal messages: an address maps to the
# many names that resolve to it, and aiohttp's DNS cache skips the resolver that notes them, so
# `AddressGuard.names` may hold another request's name for the same address.
_CONNECTING_TO: ContextVar[str | None] = ContextVar("clarion_outbound_host", default=None)


class DestinationRefused(OSError):
    """The outbound policy refused a destination; the message names the rule and the setting.

    An OSError, so that every client treats it as a connection that could not be made."""


def parse_allowed(entries: Iterable[str]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """CLARION_OUTBOUND_ALLOW's entries as networks (an address or a CIDR) and host names."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            name = _host_name(entry)
            if not name or "/" in name or ":" in name or " " in name:
                raise ValueError(
                    f"{entry!r} is neither an address, a network nor a host name"
                ) from None
            hosts.add(name)
    return tuple(networks), frozenset(hosts)


@dataclass(frozen=True)
class OutboundPolicy:
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    allow_http: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        networks, hosts = parse_allowed(settings.outbound_allow)
        return cls(networks, hosts, settings.outbound_allow_http)

    def host_allowed(self, host: str) -> bool:
        """The operator allowed this host by name: whatever it resolves to is allowed."""
        return _host_name(host) in self.hosts

    def address_refusal(self, address: str, host: str | None = None) -> str | None:
        """Why the policy refuses to connect to `address` (that `host` resolved to), or None."""
        ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 zone is no part of it
        if any(ip in network for network in self.networks):
            return None
        rule = _refusing_rule(ip)
        if rule is None:
            return None
        embedded = _embedded_ipv4(ip)
        if embedded is not None and any(embedded in network for network in self.networks):
            return None
        shown = str(ip) if embedded is None else f"{ip}, IPv4 {embedded}"
        if host is not None and _host_name(host) != str(ip):
            shown = f"{host} ({shown})"
        elif embedded is not None:
            shown = f"{ip} (IPv4 {embedded})"
        return f"{shown} is {rule}; an operator can allow it with {SETTING}"

    def url_refusal(self, url: str, *, https_only: bool = False) -> str | None:
        """What can be told of a URL before connecting: plain http:// where only https:// will
        do (unless the operator allows it), and a host written as a refused address. A host
        name is only checked when connecting: it may resolve differently by then."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError as exc:
            return f"not a URL ({exc})"
        scheme = parts.scheme.lower()
        if https_only and scheme != "https":
            if scheme != "http":
                return "must be an https:// URL"
            if not self.allow_http:
                return f"must be an https:// URL; an operator can allow http:// with {HTTP_SETTING}"
        if not host or self.host_allowed(host):
            return None
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None  # a name: checked on the addresses it resolves to when connecting
        return self.address_refusal(host)

    def resolve(self, host: str, port: int) -> str:
        """Blocking: the first address of `host` the policy allows, to connect to (and nothing
        else, so that the name cannot resolve differently in between); DestinationRefused if
        it allows none. For the clients that connect to a host and port themselves (SFTP, FTP,
        a token exchange)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        allowed_by_name = self.host_allowed(host)
        refusals = []
        for *_, sockaddr in infos:
            address = str(sockaddr[0])
            refusal = None if allowed_by_name else self.address_refusal(address, host)
            if refusal is None:
                return address
            refusals.append(refusal)
        raise DestinationRefused(refusals[0] if refusals else f"{host} has no address")


@dataclass
class AddressGuard:
    """One client's check at connect time, for clients that open sockets through a hook that
    sees the address but not the host name (aiohttp's socket factory, libcurl's open-socket
    callback): the addresses resolved for host names the operator allowed are let through, and
    the last refusal is kept for the error message (aiohttp joins the errors of several
    addresses into one line)."""

    policy: OutboundPolicy
    host: str | None = None  # the one host this guard serves (libcurl), for the message
    exempt: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)  # address -> the name it came from
    refused: str | None = None

    def refusal(self, address: str) -> str | None:
        if address in self.exempt:
            return None
        host = _CONNECTING_TO.get() or self.names.get(address, self.host)
        refusal = self.policy.address_refusal(address, host)
        if refusal is not None:
            self.refused = refusal
        return refusal

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's TCPConnector(socket_factory=...): called for every socket it opens, IP
        literals (which skip the resolver) and every redirect's host included."""
        family, kind, proto, _, sockaddr = addr_info
        refusal = self.refusal(str(sockaddr[0]))
        if refusal is not None:
            raise DestinationRefused(refusal)
        return socket.socket(family, kind, proto)

    def resolver(self) -> AbstractResolver:
        return _GuardResolver(self)

    def connector(self, **kwargs: Any) -> aiohttp.TCPConnector:
        """A TCPConnector under this guard; must be built on the loop that will use it."""
        return aiohttp.TCPConnector(
            resolver=self.resolver(), socket_factory=self.socket_factory, **kwargs
        )


class _GuardResolver(AbstractResolver):
    """aiohttp's threaded resolver, noting which addresses came from which host name."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner: AbstractResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()  # binds the running loop: built here
        results = await self._inner.resolve(host, port, family)
        guard = self._guard
        allowed = guard.policy.host_allowed(host)
        if len(guard.names) > MAX_NAMES:
            guard.names.clear()  # names are for messages only; a process's webhooks are many
        for result in results:
            address = str(result["host"])
            guard.names[address] = host
            if allowed:  # the operator's host names: a bounded set
                guard.exempt.add(address)
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


class WebhookClient:
    """POSTs JSON to URLs users gave (GDPR callbacks, any later webhook) under the policy: the
    address checked on connecting, no redirect followed, https:// unless the operator allows
    http://. One per process; its aiohttp session is built on first use, on the loop."""

    TIMEOUT_SECONDS = 10.0

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self._guard = AddressGuard(policy)
        self._session: aiohttp.ClientSession | None = None

    async def post_json(self, url: str, payload: object) -> int:
        """The answer's status; DestinationRefused if the policy refuses the URL or its
        address, aiohttp.ClientError or TimeoutError if the request fails."""
        refusal = self.policy.url_refusal(url, https_only=True)
        if refusal is not None:
            raise DestinationRefused(f"{url}: {refusal}")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._guard.connector(),
                timeout=aiohttp.ClientTimeout(total=self.TIMEOUT_SECONDS),
            )
        self._guard.refused = None
        # The socket is opened in this task (aiohttp's connector is awaited here), so the guard
        # sees this URL's host however the address was resolved or cached.
        connecting = _CONNECTING_TO.set(urlsplit(url).hostname)
        try:
            async with self._session.post(url, json=payload, allow_redirects=False) as response:
                return response.status
        except aiohttp.ClientConnectorError as exc:
            refused = refusal_in(exc) or self._guard.refused
            if refused is not None:
                raise DestinationRefused(refused) from exc
            raise
        finally:
            _CONNECTING_TO.reset(connecting)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def refusal_in(exc: BaseException) -> str | None:
    """The policy's refusal behind an exception, through causes and aiohttp's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DestinationRefused):
            return str(current)
        wrapped = getattr(current, "os_error", None)  # aiohttp.ClientConnectorError
        if isinstance(wrapped, DestinationRefused):
            return str(wrapped)
        current = current.__cause__ or current.__context__
    return None


def _refusing_rule(ip: IPAddress) -> str | None:
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return _refusing_rule(embedded)
    # Ordered from the most telling name; is_global last catches what the others leave
    # (benchmarking, documentation and the IETF's own ranges). Multicast comes before it:
    # Python counts 224.0.0.0/4 as global.
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip in _SHARED:
        return "in the shared address space 100.64.0.0/10 (carrier-grade NAT)"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a public address"
    return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches: IPv4-mapped, 6to4, Teredo's
    client, NAT64's well-known prefix. Python 3.11 judges the IPv6 form alone (it counts
    ::ffff:127.0.0.1 as no loopback and 2002:7f00:1:: as global)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _host_name(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()
