"""Where webhooks may go (``merchant_api.egress``): a merchant's URL cannot make the ledger's
server call into its own network. Addresses are checked when an endpoint is saved and again at
each delivery, which connects only to the address it checked. Name resolution is the boundary
we do not own: tests that need a name to resolve to a given address replace
``socket.getaddrinfo`` for that one name."""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import Session, col, select

from merchant_api import egress, webhooks
from merchant_api.egress import ALLOW_ENV, EgressPolicy, EgressRefused
from merchant_api.models import WebhookDelivery
from tests.merchant.conftest import Pilot, Shop
from tests.merchant.test_webhooks_delivery import Receiver, add_endpoint, checked

NAME = "merchant.example"

# -- the policy ----------------------------------------------------------------------------------

REFUSED_IN_BOTH = [
    "10.1.2.3", "172.16.0.1", "192.168.1.1",  # private
    "169.254.169.254",  # link-local: cloud metadata services
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0", "224.0.0.1", "240.0.0.1",  # unspecified, multicast, reserved
    "fe80::1", "fc00::1", "ff02::1", "::",
    "::ffff:10.0.0.1",  # IPv4-mapped
]  # fmt: skip
LOOPBACK = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"]


@pytest.mark.parametrize("address", REFUSED_IN_BOTH)
def test_private_addresses_are_refused_in_both_modes(address: str) -> None:
    policy = EgressPolicy()
    for livemode in (True, False):
        reason = policy.refusal(ipaddress.ip_address(address), livemode)
        assert reason is not None and "address" in reason


@pytest.mark.parametrize("address", LOOPBACK)
def test_loopback_is_for_test_mode_only(address: str) -> None:
    policy = EgressPolicy()
    reason = policy.refusal(ipaddress.ip_address(address), True)
    assert reason is not None and "loopback" in reason
    assert policy.refusal(ipaddress.ip_address(address), False) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    for livemode in (True, False):
        assert EgressPolicy().refusal(ipaddress.ip_address(address), livemode) is None


def test_an_operator_allows_its_own_networks() -> None:
    policy = EgressPolicy.from_env({ALLOW_ENV: " 10.20.0.0/16 , fd00:1::/64,127.0.0.1"})
    for address in ("10.20.1.1", "fd00:1::5", "127.0.0.1", "::ffff:10.20.3.4"):
        assert policy.refusal(ipaddress.ip_address(address), True) is None, address
    assert policy.refusal(ipaddress.ip_address("10.21.0.1"), True) is not None
    assert policy.refusal(ipaddress.ip_address("127.0.0.2"), True) is not None
    assert EgressPolicy.from_env({}).allowed == ()
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not a network")):
        EgressPolicy.from_env({ALLOW_ENV: "10.1.0.0/16,10.0.0.0/33"})


def test_a_bad_setting_stops_the_service_at_start(
    pilot: Pilot, monkeypatch: pytest.MonkeyPatch
) -> None:
    from merchant_api.service import MerchantService

    monkeypatch.setenv(ALLOW_ENV, "intranet")
    with pytest.raises(ValueError, match=ALLOW_ENV):
        MerchantService(pilot.ledger, pilot.merchants.wallets, b"k" * 32)


def test_resolution_takes_the_first_allowed_address_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolves_to(monkeypatch, NAME, "10.0.0.7", "93.184.215.14")
    assert EgressPolicy().resolve(NAME, 443, True) == "93.184.215.14"
    resolves_to(monkeypatch, NAME, "10.0.0.7", "127.0.0.1")
    with pytest.raises(EgressRefused, match=re.escape("10.0.0.7 is a private address")):
        EgressPolicy().resolve(NAME, 443, True)
    assert EgressPolicy().resolve(NAME, 443, False) == "127.0.0.1"
    with pytest.raises(EgressRefused, match="does not resolve"):
        EgressPolicy().resolve("no-such-host.invalid", 443, True)


# -- saving an endpoint --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "live"),
    [
        ("https://127.0.0.1/hook", True),
        ("https://localhost:8443/hook", True),
        ("https://api.localhost/hook", True),
        ("https://[::1]/hook", True),
        ("https://[::ffff:127.0.0.1]/hook", True),
        ("https://169.254.169.254/latest/meta-data", True),
        ("http://169.254.169.254/latest/meta-data", False),
        ("http://10.0.0.5:8080/hook", False),
        ("http://[fd00::5]/hook", False),
    ],
)
def test_an_endpoint_on_a_refused_address_is_not_saved(pilot: Pilot, url: str, live: bool) -> None:
    shop = pilot.merchant()
    headers = shop.live if live else shop.test
    answer = pilot.api.post("/v1/webhook_endpoints", json={"url": url}, headers=headers)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("url_not_allowed", "url")
    assert "address" in error["message"]
    assert pilot.get("/v1/webhook_endpoints", headers)["data"] == []
    made = add_endpoint(pilot, shop, "https://shop.example/hook", live=live)
    update = {"url": url}
    answer = pilot.api.post(f"/v1/webhook_endpoints/{made['id']}", json=update, headers=headers)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "url_not_allowed"
    shown = pilot.get(f"/v1/webhook_endpoints/{made['id']}", headers)
    assert shown["url"] == "https://shop.example/hook"


def test_allowed_networks_and_test_mode_loopback_are_saved(
    pilot: Pilot, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = pilot.merchant()
    assert add_endpoint(pilot, shop, "http://127.0.0.1:9/hook")["url"] == "http://127.0.0.1:9/hook"
    pilot.merchants.egress = EgressPolicy.from_env({ALLOW_ENV: "10.20.0.0/16"})
    made = add_endpoint(pilot, shop, "https://10.20.0.9/hook", live=True)
    assert made["livemode"] is True


# -- delivering ------------------------------------------------------------------------------------


def test_a_name_that_now_resolves_to_a_private_address_gets_no_connection(
    pilot: Pilot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name passed when the endpoint was saved; at delivery it resolves to
    the ledger's own machine. Nothing connects to it, and the delivery is retried later."""
    listener = Listener()
    try:
        shop = pilot.merchant()
        endpoint = add_endpoint(pilot, shop, f"https://{NAME}:{listener.port}/hook", live=True)
        resolves_to(monkeypatch, NAME, "127.0.0.1")
        live_paid_order(pilot, shop)
        result = webhooks.run_once(pilot.merchants)
        assert (result.attempted, result.delivered) == (1, 0)
        delivery = only_delivery(pilot, endpoint["id"])
        assert delivery.state == "pending" and delivery.attempts == 1
        assert delivery.last_status is None and delivery.last_error is not None
        assert "127.0.0.1 is a loopback address" in delivery.last_error
        assert listener.accepted == 0
    finally:
        listener.close()


def test_a_delivery_connects_to_the_checked_address_and_verifies_the_name(
    pilot: Pilot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A pilot network allowed by the operator: the name resolves to 127.0.0.1, the request
    goes to that address (the name is not looked up again to connect) with the name as Host and
    TLS server name, and the certificate is checked against the name (a certificate for another
    name fails the delivery)."""
    ca = tmp_path / "ca.pem"
    right, wrong = certificates(ca, tmp_path, NAME, "other.example")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    pilot.merchants.egress = EgressPolicy.from_env({ALLOW_ENV: "127.0.0.0/8"})
    looked_up = resolves_to(monkeypatch, NAME, "127.0.0.1")
    for context, delivered in ((right, True), (wrong, False)):
        receiver = Receiver(tls=context)
        try:
            shop = pilot.merchant()
            url = f"https://{NAME}:{receiver.port}/hook"
            endpoint = add_endpoint(pilot, shop, url, live=True)
            live_paid_order(pilot, shop)
            looked_up.clear()
            result = webhooks.run_once(pilot.merchants)
            assert result.delivered == int(delivered)
            assert looked_up.count(NAME) == 1  # checked once; the connection did not look again
            delivery = only_delivery(pilot, endpoint["id"])
            if delivered:
                [request] = receiver.at("/hook")
                assert request.headers["host"] == f"{NAME}:{receiver.port}"
                event = checked(pilot, request, endpoint["secret"])
                assert event["type"] == "payment_order.succeeded" and event["livemode"] is True
                assert delivery.state == "delivered"
            else:
                assert receiver.at("/hook") == []
                assert delivery.state == "pending" and delivery.last_error is not None
                assert "certificate" in delivery.last_error.lower()
        finally:
            receiver.close()


# -- helpers ---------------------------------------------------------------------------------------


def resolves_to(monkeypatch: pytest.MonkeyPatch, name: str, *addresses: str) -> list[str]:
    """``name`` resolves to ``addresses``, in that order; every other name as before. Returns
    the list of names looked up (every one, by anyone in this process) from now on."""
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        if host != name:
            return real(host, port, *args, **kwargs)
        out = []
        for a in addresses:
            family = socket.AF_INET6 if ":" in a else socket.AF_INET
            sockaddr = (a, port, 0, 0) if family == socket.AF_INET6 else (a, port)
            out.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return out

    monkeypatch.setattr(egress.socket, "getaddrinfo", getaddrinfo)
    return looked_up


def live_paid_order(pilot: Pilot, shop: Shop) -> None:
    shopper = pilot.wallet(top_up=10_000)
    order = pilot.order(shop, 1_000, live=True)
    paid = pilot.pay_order(shopper, order)
    assert paid.status_code == 200 and paid.json()["result"] == "ok", paid.text


def only_delivery(pilot: Pilot, endpoint_id: str) -> WebhookDelivery:
    query = select(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint_id)
    with Session(pilot.merchants.engine) as session:
        rows = list(session.exec(query).all())
    assert len(rows) == 1
    return rows[0]


class Listener:
    """A TCP port on 127.0.0.1 that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def certificates(ca_file: Path, tmp: Path, *names: str) -> Iterator[ssl.SSLContext]:
    """A CA (written to ``ca_file``) and, for each name, a server context with a certificate
    for that name signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    span = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test webhooks CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(span[0])
        .not_valid_after(span[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for i, name in enumerate(names):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(span[0])
            .not_valid_after(span[1])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = tmp / f"server-{i}.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem)
        yield context
