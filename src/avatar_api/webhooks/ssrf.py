"""The SSRF guard: webhook URLs may only reach public internet addresses.

Callers choose the URLs we POST to, so without this guard they could make the service
call its own admin ports, the cloud metadata service (169.254.169.254) or anything on the
private network. :func:`vet_url` accepts http(s) URLs without credentials whose host
resolves only to public addresses, and returns those addresses: the sender connects to
one of them (it does not resolve the name again), so a DNS answer that changes between
the check and the connection (DNS rebinding) cannot redirect the request.

Every resolved address must pass, not just the first: the connection may use any of them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""``(host, port) -> addresses``; raises ``OSError`` when the name does not resolve."""

RESOLVE_TIMEOUT_SECONDS = 5.0

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Checked in order, so the more specific reason wins. Python's is_global/is_private are a
# backstop only: their lists differ between Python releases and miss some ranges (3.11
# calls 224.0.0.1 and 64:ff9b::7f00:1 "global").
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/8"), "an unspecified ('this network') address"),
    (_V4("10.0.0.0/8"), "a private address"),
    (_V4("100.64.0.0/10"), "a carrier-grade NAT (shared) address"),
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V4("169.254.0.0/16"), "a link-local address (cloud metadata lives here)"),
    (_V4("172.16.0.0/12"), "a private address"),
    (_V4("192.0.0.0/24"), "an IETF protocol assignment"),
    (_V4("192.0.2.0/24"), "a documentation address"),
    (_V4("192.88.99.0/24"), "a 6to4 relay anycast address"),
    (_V4("192.168.0.0/16"), "a private address"),
    (_V4("198.18.0.0/15"), "a benchmarking address"),
    (_V4("198.51.100.0/24"), "a documentation address"),
    (_V4("203.0.113.0/24"), "a documentation address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V4("240.0.0.0/4"), "a reserved address"),
)
_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "the unspecified address"),
    (_V6("::1/128"), "the loopback address"),
    (_V6("::/96"), "an IPv4-compatible address"),
    (_V6("::ffff:0:0:0/96"), "an IPv4-translated address"),
    (_V6("64:ff9b::/96"), "a NAT64 address (it reaches an IPv4 address through a gateway)"),
    (_V6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_V6("100::/64"), "a discard-only address"),
    (_V6("2001::/32"), "a Teredo address"),
    (_V6("2001:db8::/32"), "a documentation address"),
    (_V6("3fff::/20"), "a documentation address"),
    (_V6("5f00::/16"), "a segment-routing address"),
    (_V6("fc00::/7"), "a unique-local (private) address"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fec0::/10"), "a site-local address"),
    (_V6("ff00::/8"), "a multicast address"),
)
# Only global unicast space is ever routed on the internet; everything else is refused.
_GLOBAL_UNICAST_V6 = _V6("2000::/3")
_SIX_TO_FOUR = _V6("2002::/16")


class UnsafeTarget(ValueError):
    """The URL is not a target we will send to; the message says why."""


@dataclass(frozen=True)
class VettedTarget:
    """A checked URL and the addresses its host resolved to, in resolver order."""

    url: httpx.URL
    host: str  # ASCII (IDNA-encoded) host, without brackets for IPv6
    netloc: str  # the Host header: host, and port when not the scheme's default
    host_is_ip: bool
    addresses: tuple[IPAddress, ...]


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public internet address, or ``None`` when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        return _v6_refusal(address)
    for network, reason in _REFUSED_V4:
        if address in network:
            return reason
    if not address.is_global:
        return "not a globally reachable address"
    return None


def _v6_refusal(address: ipaddress.IPv6Address) -> str | None:
    mapped = address.ipv4_mapped
    if mapped is not None:
        # Dual-stack sockets reach the embedded IPv4 address; refused whatever it is, as a
        # public IPv4 target should simply be given as such.
        return f"an IPv4-mapped address (of {mapped})"
    if address in _SIX_TO_FOUR:
        # 6to4 reaches the embedded IPv4 address through a relay: judge that address.
        embedded = address.sixtofour
        assert embedded is not None
        inner = refusal_reason(embedded)
        return f"a 6to4 address embedding {embedded}, {inner}" if inner else None
    for network, reason in _REFUSED_V6:
        if address in network:
            return reason
    if address not in _GLOBAL_UNICAST_V6:
        return "not a global unicast address"
    if not address.is_global:
        return "not a globally reachable address"
    return None


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The operating system's resolver (getaddrinfo), run in a thread: it blocks."""
    infos = await asyncio.to_thread(
        socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        # IPv6 link-local answers carry a zone ("fe80::1%eth0"); the address is what counts.
        addresses.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return addresses


async def _resolve(resolver: Resolver, host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            resolved = await resolver(host, port)
    except (OSError, TimeoutError, UnicodeError, ValueError) as exc:
        raise UnsafeTarget(f"The host {host} could not be resolved.") from exc
    addresses = tuple(dict.fromkeys(resolved))
    if not addresses:
        raise UnsafeTarget(f"The host {host} has no addresses.")
    return addresses


async def vet_url(url: str, *, resolver: Resolver, allow_private: bool = False) -> VettedTarget:
    """Check ``url`` and resolve its host; raise :class:`UnsafeTarget` when refused.

    ``allow_private`` (development only) admits any address but still applies the URL
    rules and still returns the resolved addresses to connect to.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeTarget(f"Not a valid URL: {exc}.") from exc
    if parsed.scheme not in ("http", "https"):
        raise UnsafeTarget("Only http and https URLs are allowed.")
    if parsed.userinfo:
        # Credentials in a URL end up in logs and delivery records; use the signature.
        raise UnsafeTarget("URLs with a user name or password are not allowed.")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UnsafeTarget("The URL has no host.")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise UnsafeTarget(f"The port {port} is not a valid TCP port.")
    # An IPv6 literal with a zone arrives percent-encoded ("fe80::1%25eth0").
    literal = _parse_ip(unquote(host))
    addresses = (literal,) if literal is not None else await _resolve(resolver, host, port)
    if not allow_private:
        for address in addresses:
            reason = refusal_reason(address)
            if reason is not None:
                what = (
                    f"{address} is"
                    if literal is not None
                    else f"{host} resolves to {address}, which is"
                )
                raise UnsafeTarget(
                    f"{what} {reason}; webhook targets must be public internet addresses."
                )
    return VettedTarget(
        url=parsed,
        host=host,
        netloc=parsed.netloc.decode("ascii"),
        host_is_ip=literal is not None,
        addresses=addresses,
    )
