"""Webhook destinations (issue 13, items 13 and 15): a URL is judged by the address it really
reaches, and a malformed one is a 422 that names it, never a 500.

Registration goes through the API (a real app on SQLite); the addresses are literals, so no
name server is asked and nothing is sent.
"""

from __future__ import annotations

import ipaddress

import pytest
from fastapi.testclient import TestClient

from service.outbound_webhooks.destinations import check_destination

EVENTS = ["audit.succeeded"]

# Each with what the refusal must say. The first six got through before (issue 13, item 15).
REFUSED = [
    ("http://[::127.0.0.1]/", "deprecated IPv4-compatible, carrying 127.0.0.1"),
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local, leading to 169.254.169.254"),
    ("http://[64:ff9b::7f00:1]/", "loopback, leading to 127.0.0.1"),
    ("http://[2002:a9fe:a9fe::]/", "link-local, leading to 169.254.169.254"),
    ("http://[fec0::1]/", "deprecated site-local"),
    ("http://192.88.99.1/", "deprecated 6to4 relay anycast"),
    # Forms that held already, kept so that they keep holding.
    ("http://127.0.0.1:9/hook", "127.0.0.1, a private, loopback or reserved address"),
    ("http://localhost/hook", "a private, loopback or reserved address"),
    ("http://10.1.2.3/hook", "10.1.2.3, a private, loopback or reserved address (private)"),
    ("http://169.254.169.254/latest/meta-data", "(link-local)"),
    ("http://[::1]/hook", "::1, a private, loopback or reserved address (loopback)"),
    ("http://[::ffff:127.0.0.1]/", "loopback, leading to 127.0.0.1"),
    ("http://[::ffff:10.0.0.1]/", "private, leading to 10.0.0.1"),
    ("http://[fd00::1]/", "unique local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::]/", "unspecified"),
    ("http://0.0.0.0/", "this-network"),
    ("http://100.64.0.1/", "shared carrier-grade NAT"),
    ("http://192.0.0.8/", "IETF protocol assignment"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://203.0.113.7/", "documentation"),
    ("http://224.0.1.1/", "multicast"),
    ("http://255.255.255.255/", "reserved"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[2001::1]/", "Teredo"),
    ("http://[64:ff9b:1::1]/", "local-use NAT64"),
    ("http://[ff02::1]/", "multicast"),
    ("http://2130706433/", "127.0.0.1"),  # 127.0.0.1 as one decimal number
]
MALFORMED = [
    ("http://example.org:99999/hook", "'http://example.org:99999/hook' is not a valid URL"),
    ("http://[::1", "'http://[::1' is not a valid URL"),
    ("http://example.org:port/", "'http://example.org:port/' is not a valid URL"),
    ("ftp://example.org/hook", "expected an http:// or https:// URL"),
]


def _subscribe(app_and_keys, url: str):
    app, keys = app_and_keys
    headers = {"Authorization": f"Bearer {keys['beta-admin']}"}
    with TestClient(app) as client:
        return client.post("/v1/webhooks", headers=headers, json={"url": url, "events": EVENTS})


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_internal_destinations_in_every_form_are_refused(app_and_keys, url, why):
    response = _subscribe(app_and_keys, url)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("url: ")
    assert why in detail
    assert "webhooks are only sent to public addresses" in detail


@pytest.mark.parametrize(("url", "why"), MALFORMED)
def test_malformed_urls_are_a_422_naming_the_url(app_and_keys, url, why):
    response = _subscribe(app_and_keys, url)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert why in response.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]/hook",
        "http://[::ffff:8.8.8.8]/hook",  # IPv4-mapped, public inside
        "http://[64:ff9b::808:808]/hook",  # NAT64 of 8.8.8.8
        "http://[2002:808:808::1]/hook",  # 6to4 of 8.8.8.8
    ],
)
def test_public_destinations_in_every_form_are_accepted(app_and_keys, url):
    response = _subscribe(app_and_keys, url)
    assert response.status_code == 201, response.text


def test_the_check_before_each_delivery_is_the_same_one():
    """Deliveries call check_destination again; it refuses what registration refuses."""
    from service.outbound_webhooks.destinations import refusal

    for url, why in REFUSED:
        with pytest.raises(ValueError, match="public addresses") as refused:
            check_destination(url, allow_private=False)
        assert why in str(refused.value)
    assert refusal(ipaddress.ip_address("64:ff9b::808:808")) is None
    pinned = check_destination("http://[64:ff9b::7f00:1]:8080/x", allow_private=True)
    assert pinned.url == "http://[64:ff9b::7f00:1]:8080/x"
