"""Where a webhook may be sent: never to private, loopback or otherwise internal addresses
(server-side request forgery) unless the operator allows them.

An address is judged by what it really reaches: IPv6 forms that carry an IPv4 address
(IPv4-mapped, NAT64, 6to4) are judged by that IPv4 address, and deprecated or special-purpose
ranges (IPv4-compatible and site-local IPv6, the 6to4 relay anycast, documentation, benchmark,
multicast and reserved blocks) are refused whatever they embed. The lists are spelled out
here rather than taken from `ipaddress.is_global`, whose answers differ between Python
versions and miss several of these forms.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv4 blocks that are not the public internet (RFC 6890 and its updates), with why.
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(block), why)
    for block, why in (
        ("0.0.0.0/8", "this-network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
# IPv6 blocks refused outright (after the IPv4-carrying forms below were unwrapped).
_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(block), why)
    for block, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "deprecated IPv4-compatible"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignment, Teredo among them"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "deprecated site-local"),
        ("ff00::/8", "multicast"),
        ("::/8", "reserved"),  # last: it holds the more specific blocks above
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: the last 32 bits
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class RefusedDestination(ValueError):
    """The URL is malformed or resolves to an address webhooks may not reach."""


@dataclass(frozen=True)
class PinnedDestination:
    """A URL whose host was resolved and checked once, to be connected to at that address:
    a second resolution at connect time could answer differently (DNS rebinding)."""

    url: str  # with the checked address in place of the host name
    host_header: str
    tls_server_name: str


def reached_address(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address really leads to, when it carries one (IPv4-mapped,
    NAT64, 6to4); otherwise the address itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return address


def refusal(address: IPAddress) -> str | None:
    """Why webhooks may not be sent to `address`, in a few words (None: a public address)."""
    reached = reached_address(address)
    # Deprecated, so refused below whatever it carries; the carried address is named.
    if reached in _IPV4_COMPATIBLE and int(reached) > 1:
        via = f", carrying {ipaddress.IPv4Address(int(reached) & 0xFFFFFFFF)}"
    else:
        via = "" if reached == address else f", leading to {reached}"
    if isinstance(reached, ipaddress.IPv4Address):
        blocks: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]
        blocks = _REFUSED_V4
    else:
        blocks = _REFUSED_V6
    for block, why in blocks:
        if reached in block:
            return f"{why}{via}"
    if not reached.is_global:  # anything a newer registry lists that the tables above miss
        return f"not public{via}"
    return None


def check_destination(url: str, *, allow_private: bool) -> PinnedDestination:
    """Resolve and check; raise RefusedDestination naming the problem. Done when a
    subscription is made and again before every delivery, which then connects to the
    address checked here."""
    parts, port = _parsed(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise RefusedDestination(f"{parts.hostname}: does not resolve ({error})") from None
    # A scoped IPv6 literal (fe80::1%eth0) comes back with its scope; the address is before it.
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not allow_private:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise RefusedDestination(
                    f"{parts.hostname} resolves to {address}, a private, loopback or reserved "
                    f"address ({why}); webhooks are only sent to public addresses"
                )
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return PinnedDestination(
        url=urlunsplit(parts._replace(netloc=netloc)),
        host_header=parts.netloc.rsplit("@", 1)[-1],
        tls_server_name=str(parts.hostname),
    )


def _parsed(url: str) -> tuple[SplitResult, int]:
    """The URL's parts and port; RefusedDestination naming the URL when it is malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port outside 0-65535 or that is not a number
    except ValueError as error:
        raise RefusedDestination(f"{url!r} is not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedDestination(f"{url!r}: expected an http:// or https:// URL with a host")
    if port == 0:
        raise RefusedDestination(f"{url!r}: port 0 cannot be connected to")
    return parts, port or (443 if parts.scheme == "https" else 80)
