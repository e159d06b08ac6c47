"""Where a webhook may be sent: never to private, loopback or otherwise internal addresses
(server-side request forgery) unless the operator allows them."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


class RefusedDestination(ValueError):
    """The URL is malformed or resolves to an address webhooks may not reach."""


@dataclass(frozen=True)
class PinnedDestination:
    """A URL whose host was resolved and checked once, to be connected to at that address:
    a second resolution at connect time could answer differently (DNS rebinding)."""

    url: str  # with the checked address in place of the host name
    host_header: str
    tls_server_name: str


def check_destination(url: str, *, allow_private: bool) -> PinnedDestination:
    """Resolve and check; raise RefusedDestination naming the problem. Done when a
    subscription is made and again before every delivery, which then connects to the
    address checked here."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedDestination(f"{url!r}: expected an http:// or https:// URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise RefusedDestination(f"{parts.hostname}: does not resolve ({error})") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not allow_private:
        for address in addresses:
            if not address.is_global:
                raise RefusedDestination(
                    f"{parts.hostname} resolves to {address}, a private, loopback or reserved "
                    "address; webhooks are only sent to public addresses"
                )
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return PinnedDestination(
        url=urlunsplit(parts._replace(netloc=netloc)),
        host_header=parts.netloc.rsplit("@", 1)[-1],
        tls_server_name=parts.hostname,
    )
