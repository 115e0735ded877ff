"""Where the ledger's own outgoing requests (webhook deliveries) may go.

A merchant names a URL and the ledger's server calls it: without a check, a merchant's key would
let anyone make that server call into its own network (server-side request forgery): the cloud
metadata service at 169.254.169.254, a database port on 127.0.0.1, an admin page on 10.x. So:

- **live mode** reaches public (globally routable, unicast) addresses only;
- **test mode** reaches those and the loopback network, so a developer's receiver on their own
  machine (and ``ledger demo``'s) works as it does with Stripe's test mode and CLI;
- a pilot whose merchants sit on a private network allows it by name, for both modes:
  ``LEDGER_WEBHOOK_ALLOW_NETWORKS`` (comma-separated CIDRs, e.g. ``10.20.0.0/16,fd00:1::/64``).

A URL's host is checked when the endpoint is saved if it is an address or a ``localhost`` name,
and every delivery checks what the name resolves to *then* and connects to the address it
checked (:meth:`EgressPolicy.resolve`): a name that resolved to a public address when the
endpoint was made and to a private one later (DNS rebinding) is refused at the delivery.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

ALLOW_ENV: Final = "LEDGER_WEBHOOK_ALLOW_NETWORKS"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(Exception):
    """A destination the policy does not allow; the message says which address and why."""


def _plain(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _kind(address: Address) -> str:
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "not globally routable"


@dataclass(frozen=True)
class EgressPolicy:
    allowed: tuple[Network, ...] = ()
    """Networks reachable beyond public addresses (both modes)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> EgressPolicy:
        """The policy ``LEDGER_WEBHOOK_ALLOW_NETWORKS`` sets; ``ValueError`` naming a bad entry."""
        networks = []
        for entry in environ.get(ALLOW_ENV, "").split(","):
            if entry.strip():
                try:
                    networks.append(ipaddress.ip_network(entry.strip(), strict=False))
                except ValueError:
                    raise ValueError(f"{ALLOW_ENV}: {entry.strip()!r} is not a network") from None
        return cls(tuple(networks))

    def refusal(self, address: Address, livemode: bool) -> str | None:
        """Why ``address`` may not be called in this mode, or None if it may."""
        address = _plain(address)
        if any(address in network for network in self.allowed):
            return None
        if not livemode and address.is_loopback:
            return None
        if address.is_global and not address.is_multicast:
            return None
        where = "public" if livemode else "public or loopback"
        return f"{address} is a {_kind(address)} address; webhooks go to {where} addresses only"

    def check_host(self, host: str, livemode: bool) -> None:
        """Refuse, when an endpoint is saved, a host that is plainly not allowed: an address
        literal the policy refuses, or a ``localhost`` name in live mode. Other names are
        checked when they are resolved, at each delivery."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            name = host.lower().rstrip(".")
            if name == "localhost" or name.endswith(".localhost"):
                address = ipaddress.ip_address("127.0.0.1")
            else:
                return
        reason = self.refusal(address, livemode)
        if reason is not None:
            raise EgressRefused(reason)

    def resolve(self, host: str, port: int, livemode: bool) -> str:
        """The first address ``host`` resolves to now that the policy allows, to connect to
        (and to nothing else); ``EgressRefused`` when there is none."""
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise EgressRefused(f"{host} does not resolve: {exc}") from None
        reasons = []
        for *_, sockaddr in found:
            address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            reason = self.refusal(address, livemode)
            if reason is None:
                return str(_plain(address))
            reasons.append(reason)
        raise EgressRefused(f"{host}: {reasons[0] if reasons else 'no address'}")
