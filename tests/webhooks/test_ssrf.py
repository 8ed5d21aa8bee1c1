from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from avatar_api.settings import Settings, UnsafeConfiguration
from avatar_api.webhooks.ssrf import (
    IPAddress,
    UnsafeTarget,
    refusal_reason,
    system_resolver,
    vet_url,
)
from tests.webhooks.conftest import PUBLIC_V4, PUBLIC_V6, FakeResolver

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),  # noqa: S104  (an address under test, not a bind)
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.0.170", "IETF protocol"),
    ("192.0.2.10", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:10.0.0.1", "IPv4-mapped"),
    # A public IPv4 behind the mapped form is refused too: give it as IPv4 instead.
    ("::ffff:93.184.215.14", "IPv4-mapped"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("::ffff:0:7f00:1", "IPv4-translated"),
    ("64:ff9b::7f00:1", "NAT64"),
    ("64:ff9b::5db8:d70e", "NAT64"),
    ("64:ff9b:1::a00:1", "NAT64"),
    ("2002:7f00:1::", "6to4 address embedding 127.0.0.1, a loopback"),
    ("2002:a9fe:a9fe::1", "6to4 address embedding 169.254.169.254"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard-only"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("ff02::1", "multicast"),
    ("ff05::2", "multicast"),
    ("5f00::1", "segment-routing"),
    ("4000::1", "not a global unicast"),
]
ALLOWED = [
    PUBLIC_V4,
    "8.8.8.8",
    "1.1.1.1",
    PUBLIC_V6,
    "2a00:1450:4001:80e::200e",
    # 6to4 of a public IPv4 reaches that public address.
    "2002:5db8:d70e::1",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None, address
    assert reason in found


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "reason"), REFUSED)
async def test_literal_ip_urls_are_refused(address: str, reason: str) -> None:
    ip = ipaddress.ip_address(address)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    resolver = FakeResolver()
    with pytest.raises(UnsafeTarget, match="public internet addresses") as info:
        await vet_url(f"https://{host}:8443/hook", resolver=resolver)
    assert reason in str(info.value)
    assert resolver.calls == []  # a literal address is judged as is, never resolved


@pytest.mark.parametrize(("address", "reason"), REFUSED)
async def test_host_names_resolving_to_non_public_addresses_are_refused(
    address: str, reason: str
) -> None:
    resolver = FakeResolver({"hooks.example.net": [address]})
    with pytest.raises(UnsafeTarget) as info:
        await vet_url("https://hooks.example.net/hook", resolver=resolver)
    assert f"hooks.example.net resolves to {ipaddress.ip_address(address)}" in str(info.value)
    assert reason in str(info.value)
    assert resolver.calls == [("hooks.example.net", 443)]


@pytest.mark.parametrize(
    "addresses",
    [
        [PUBLIC_V4, "127.0.0.1"],
        ["10.0.0.1", PUBLIC_V4],
        [PUBLIC_V6, "::ffff:127.0.0.1"],
        [PUBLIC_V4, PUBLIC_V6, "fe80::1"],
    ],
)
async def test_one_non_public_address_among_many_refuses_the_host(addresses: list[str]) -> None:
    resolver = FakeResolver({"mixed.example.net": addresses})
    with pytest.raises(UnsafeTarget):
        await vet_url("http://mixed.example.net/", resolver=resolver)


async def test_public_host_returns_every_vetted_address_in_order() -> None:
    resolver = FakeResolver({"hooks.example.net": [PUBLIC_V6, PUBLIC_V4, PUBLIC_V6]})
    target = await vet_url("https://hooks.example.net:8443/a/b?c=d", resolver=resolver)
    expected: tuple[IPAddress, ...] = (
        ipaddress.ip_address(PUBLIC_V6),
        ipaddress.ip_address(PUBLIC_V4),
    )
    assert target.addresses == expected
    assert (target.host, target.netloc, target.host_is_ip) == (
        "hooks.example.net",
        "hooks.example.net:8443",
        False,
    )
    assert resolver.calls == [("hooks.example.net", 8443)]


async def test_international_host_names_are_resolved_in_their_ascii_form() -> None:
    resolver = FakeResolver({"xn--bcher-kva.example": [PUBLIC_V4]})
    target = await vet_url("https://bücher.example/hook", resolver=resolver)
    assert target.host == "xn--bcher-kva.example"
    assert target.netloc == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/x", "Only http and https"),
        ("file:///etc/passwd", "Only http and https"),
        ("gopher://hooks.example.com/", "Only http and https"),
        ("javascript:alert(1)", "Only http and https"),
        ("hooks.example.com/x", "Only http and https"),
        ("https://user:pw@hooks.example.com/x", "user name or password"),
        ("https://user@hooks.example.com/x", "user name or password"),
        ("https://:pw@hooks.example.com/x", "user name or password"),
        ("http:///x", "no host"),
        ("https://nowhere.example.com/x", "could not be resolved"),
        ("https://[::1/", "Not a valid URL"),
        ("https://hooks.example.com:99999/", "not a valid TCP port"),
        ("https://[fe80::1%25eth0]/", "link-local"),
    ],
)
async def test_url_rules(url: str, message: str, resolver: FakeResolver) -> None:
    with pytest.raises(UnsafeTarget, match=message):
        await vet_url(url, resolver=resolver)


async def test_empty_resolution_is_refused() -> None:
    with pytest.raises(UnsafeTarget, match="no addresses"):
        await vet_url(
            "https://empty.example.com/", resolver=FakeResolver({"empty.example.com": []})
        )


async def test_a_hanging_resolver_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("avatar_api.webhooks.ssrf.RESOLVE_TIMEOUT_SECONDS", 0.05)

    async def hang(host: str, port: int) -> list[IPAddress]:
        await asyncio.sleep(10)
        return []

    with pytest.raises(UnsafeTarget, match="could not be resolved"):
        await vet_url("https://slow.example.com/", resolver=hang)


async def test_allow_private_admits_private_targets_but_keeps_url_rules() -> None:
    resolver = FakeResolver({"internal.example.com": ["10.0.0.7"]})
    target = await vet_url(
        "http://internal.example.com:8080/x", resolver=resolver, allow_private=True
    )
    assert target.addresses == (ipaddress.ip_address("10.0.0.7"),)
    literal = await vet_url("http://127.0.0.1:9/x", resolver=resolver, allow_private=True)
    assert literal.host_is_ip
    assert literal.addresses == (ipaddress.ip_address("127.0.0.1"),)
    with pytest.raises(UnsafeTarget, match="user name"):
        await vet_url("http://u:p@127.0.0.1/", resolver=resolver, allow_private=True)
    with pytest.raises(UnsafeTarget, match="Only http"):
        await vet_url("ftp://127.0.0.1/", resolver=resolver, allow_private=True)


@pytest.mark.parametrize(
    "host",
    # Numeric spellings of 127.0.0.1 that getaddrinfo accepts without any DNS query.
    ["localhost", "2130706433", "0x7f000001", "127.1", "127.0.0.1"],
)
async def test_system_resolver_sees_through_alternative_spellings(host: str) -> None:
    with pytest.raises(UnsafeTarget, match="loopback"):
        await vet_url(f"http://{host}:8080/", resolver=system_resolver)


async def test_system_resolver_returns_addresses() -> None:
    addresses = await system_resolver("127.0.0.1", 80)
    assert addresses == [ipaddress.ip_address("127.0.0.1")]


def test_private_targets_are_refused_in_production() -> None:
    safe: dict[str, Any] = {
        "environment": "production",
        "secret_key": "x" * 40,
        "public_base_url": "https://avatars.example.com",
        "fal_key": "id:secret",
    }
    Settings(_env_file=None, **safe).check_production_safety()
    unsafe = Settings(_env_file=None, **safe, webhook_allow_private_targets=True)
    with pytest.raises(UnsafeConfiguration, match="AVATAR_WEBHOOK_ALLOW_PRIVATE_TARGETS"):
        unsafe.check_production_safety()
    # Development may use it (a receiver on localhost).
    Settings(_env_file=None, webhook_allow_private_targets=True).check_production_safety()
