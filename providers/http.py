"""Outbound HTTP for adapters: timeouts, no redirects, and no way into the broker's own network.

A provider's endpoint is typed in by an operator, so it is untrusted input: pointed at
`169.254.169.254` or `127.0.0.1` it would make the broker fetch its own metadata service or
admin ports (SSRF). `HttpPolicy.check_url` refuses such URLs when they are configured, and the
sessions it hands out re-check the address at connect time and connect to exactly the address
they checked, so a name that resolves elsewhere later (DNS rebinding) is refused too.
"""

from __future__ import annotations

import email.utils
import ipaddress
import math
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError
from urllib3.util import connection as urllib3_connection


class UnsafeEndpoint(ValueError):
    """The URL is not https, or its host is (or resolves to) a non-public address."""


class Unresolvable(UnsafeEndpoint):
    """The host name does not resolve."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # `is_global` is false for loopback, private (RFC 1918, fc00::/7), link-local,
    # shared (100.64/10), documentation and reserved ranges.
    return address.is_global and not address.is_multicast


def resolve_public(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, if all of them are public; else `UnsafeEndpoint`."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]").rstrip("."))
    except ValueError:
        literal = None
    if literal is not None:
        if not _public(literal):
            raise UnsafeEndpoint(f"{literal} is not a public address.")
        return [str(literal)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise Unresolvable(f"{host!r} does not resolve.") from None
    addresses: list[str] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not _public(address):
            raise UnsafeEndpoint(f"{host!r} resolves to {address}, which is not public.")
        addresses.append(str(address))
    if not addresses:
        raise Unresolvable(f"{host!r} does not resolve.")
    return addresses


def parse_retry_after(value: str | None, default: float = 1.0, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); `default`
    when it is missing or unreadable."""
    if not value:
        return default
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return default
    return max(0.0, seconds)


class _GuardedConnectionMixin:
    """Resolve, check, then connect to the checked address (TLS still verifies the name)."""

    _dns_host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            address = resolve_public(self._dns_host, self.port)[0]
        except Unresolvable as error:  # transient, like any failed lookup
            raise NewConnectionError(self, str(error)) from None  # type: ignore[arg-type]
        return urllib3_connection.create_connection(
            (address, self.port),
            self.timeout,
            source_address=self.source_address,
            socket_options=self.socket_options,
        )


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }


class _Session(requests.Session):
    """A session that never follows a redirect, whatever its caller asks."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False
        return super().send(request, **kwargs)


@dataclass(frozen=True)
class HttpPolicy:
    """How adapters may call out. `allow_private` exists for the local fake clouds of the test
    suite only: it admits http and loopback/private addresses."""

    timeout: float = 10.0
    allow_private: bool = False

    def check_url(self, url: str) -> None:
        """Refuse a URL that is not https or names a non-public address. A name that does
        not resolve (yet) passes: it is checked again at every connection."""
        parts = urlsplit(url)
        schemes = {"https", "http"} if self.allow_private else {"https"}
        if parts.scheme not in schemes:
            raise UnsafeEndpoint("The endpoint must be an https URL.")
        if not parts.hostname:
            raise UnsafeEndpoint("The endpoint has no host.")
        if parts.username is not None or parts.password is not None:
            raise UnsafeEndpoint("Credentials do not belong in the endpoint URL.")
        if not self.allow_private:
            try:
                resolve_public(parts.hostname, parts.port or 443)
            except Unresolvable:
                pass

    def session(self, headers: Mapping[str, str] | None = None) -> requests.Session:
        """A requests session for one adapter: no redirects, no proxies from the environment,
        and (unless `allow_private`) every connection checked as above."""
        session = _Session()
        session.trust_env = False
        if headers:
            session.headers.update(headers)
        if not self.allow_private:
            guarded = _GuardedAdapter()
            session.mount("https://", guarded)
            session.mount("http://", guarded)
        return session
