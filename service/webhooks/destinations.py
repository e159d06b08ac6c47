"""Where a webhook may be sent: never to private, loopback or otherwise internal addresses
(server-side request forgery) unless the operator allows them."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class RefusedDestination(ValueError):
    """The URL is malformed or resolves to an address webhooks may not reach."""


def check_destination(url: str, *, allow_private: bool) -> None:
    """Raise RefusedDestination naming the problem. Checked at subscription and again at
    every delivery: a name may resolve elsewhere later (DNS rebinding)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedDestination(f"{url!r}: expected an http:// or https:// URL with a host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise RefusedDestination(f"{parts.hostname}: does not resolve ({error})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise RefusedDestination(
                f"{parts.hostname} resolves to {address}, a private, loopback or reserved "
                "address; webhooks are only sent to public addresses"
            )
