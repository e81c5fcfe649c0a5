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
from typing import Any, TypeVar
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


# Refused whatever `is_global` says, which varies between Python versions (3.11.7 calls
# 192.0.0.9, 3fff::/20, 2002::/16 and 64:ff9b:1::/48 global; 3.13 does not).
_REFUSED = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "2001::/32",  # Teredo: the tunnel's relay decides where it goes
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4 (deprecated, RFC 7526): same
        "3fff::/20",  # documentation
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): some operator's own translator
    )
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix (RFC 6052)
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _carried(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped and -compatible (::/96), NAT64
    (64:ff9b::/96, and 64:ff9b:1::/48 read as /96 and as RFC 6052 /48), 6to4, Teredo server
    and client."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    value = int(address)
    last = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address.ipv4_mapped is not None or address in _NAT64 or 1 < value < 1 << 32:
        return [last]
    if address in _NAT64_LOCAL:
        split = ((value >> 64) & 0xFFFF) << 16 | ((value >> 40) & 0xFFFF)  # around bits 64-71
        return [last, ipaddress.IPv4Address(split)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    return list(address.teredo or ())


def _public(address: IPAddress) -> bool:
    """Whether the broker may call `address`: a globally routable unicast address, never one
    that reaches the broker's own network (SSRF), including through an IPv4 address embedded
    in an IPv6 one, which the host or a translator or tunnel on the way would call instead.
    An IPv4-mapped address is that IPv4 address; the well-known NAT64 prefix is accepted when
    the IPv4 it carries is public (an IPv6-only host reaches IPv4-only providers so, and the
    translator calls exactly that IPv4); other IPv6 must be global unicast (2000::/3)."""
    carried = _carried(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None or address in _NAT64:
            return _public(carried[0])
        if address not in _GLOBAL_UNICAST:
            return False
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not any(address in network for network in _REFUSED)
        and all(_public(ipv4) for ipv4 in carried)
    )


def _described(address: IPAddress) -> str:
    """`address`, and the IPv4 addresses it carries, for a refusal message."""
    carried = ", ".join(str(ipv4) for ipv4 in _carried(address))
    return f"{address} (carrying {carried})" if carried else str(address)


def resolve_public(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, if all of them are public; else `UnsafeEndpoint`."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]").rstrip("."))
    except ValueError:
        literal = None
    if literal is not None:
        if not _public(literal):
            raise UnsafeEndpoint(f"{_described(literal)} is not a public address.")
        return [str(literal)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise Unresolvable(f"{host!r} does not resolve.") from None
    addresses: list[str] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not _public(address):
            raise UnsafeEndpoint(
                f"{host!r} resolves to {_described(address)}, which is not public."
            )
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


class GuardedConnectionMixin:
    """Resolve, check, then connect to the checked address (TLS still verifies the name).
    Mixed into urllib3's connection classes: requests sessions' (`HttpPolicy.harden`) and
    botocore's (`providers/s3.py`)."""

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


class _GuardedHTTPConnection(GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(GuardedConnectionMixin, HTTPSConnection):
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


_S = TypeVar("_S", bound=requests.Session)


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
        session = self.harden(_Session())
        if headers:
            session.headers.update(headers)
        return session

    def harden(self, session: _S) -> _S:
        """The same rules on a session made by a library (an OAuth client's, say): no proxies
        from the environment and (unless `allow_private`) every connection checked, a
        redirect's included."""
        session.trust_env = False
        if not self.allow_private:
            guarded = _GuardedAdapter()
            session.mount("https://", guarded)
            session.mount("http://", guarded)
        return session
