"""Where the service may send requests of its own (webhooks): public addresses only, unless allowed.

A target host is resolved with `socket.getaddrinfo`; if any of its addresses is loopback, private (RFC 1918,
unique-local IPv6), link-local (cloud metadata at 169.254.169.254 included), multicast, unspecified or otherwise
not globally routable, the target is refused. IPv4 addresses embedded in IPv6 ones (mapped, 6to4, NAT64, Teredo)
are judged as IPv4. The operator's allow-list (host names or CIDRs) admits named internal targets.

The API checks at submission; the worker checks again right before it connects, and connects to the address it
checked (so a name that resolves elsewhere the second time cannot redirect the request).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_HINT = ("webhooks go to public addresses only; an operator can allow internal targets with "
              "NERFSERVE_WEBHOOK_ALLOW_HOSTS (host names or CIDRs, comma-separated)")

_PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(ValueError):
    """The target may not be contacted; the message names the host and why."""

    def __init__(self, message: str, hint: str = ALLOW_HINT) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class Unresolved(Refused):
    """The host name does not resolve (now); at send time this is worth a retry."""


@dataclass(frozen=True)
class Target:
    """A checked URL: its host (ASCII), port and the addresses it may be reached at (in resolver order)."""

    url: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class AllowList:
    """Operator-allowed host names (exact, case-insensitive) and networks."""

    names: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @staticmethod
    def parse(entries: Iterable[str]) -> AllowList:
        names, networks = set(), []
        for raw in entries:
            entry = raw.strip().strip("[]").rstrip(".").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry)
        return AllowList(frozenset(names), tuple(networks))

    def admits(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


def _embedded_v4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, bool]:
    """(IPv4 address inside `address`, whether it is only a translation of it: mapped or NAT64)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, True
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), True
    if address.sixtofour is not None:
        return address.sixtofour, False
    if address.teredo is not None:
        return address.teredo[1], False
    return None, False


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` may not be contacted ('loopback', 'private', ...), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        v4, translated = _embedded_v4(address)
        if v4 is not None:
            reason = refusal_reason(v4)
            if reason or translated:
                return f"{reason} (IPv4 {v4} inside IPv6)" if reason else None
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)" if str(address) == "169.254.169.254" else "link-local"
    if address.is_multicast:
        return "multicast"
    if any(address.version == n.version and address in n for n in _PRIVATE):
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "reserved (not globally routable)"
    return None


def parse_ip(text: str) -> IPAddress | None:
    """An IP literal (brackets and an IPv6 zone allowed), or None for a host name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to, in the resolver's order (an IP literal is itself)."""
    literal = parse_ip(host)
    if literal is not None:
        return (literal,)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise Unresolved(f"host {host} does not resolve ({e})", "check the host name of the URL") from None
    out: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = parse_ip(str(sockaddr[0]))
        if address is not None and address not in out:
            out.append(address)
    if not out:
        raise Unresolved(f"host {host} does not resolve to an IP address", "check the host name of the URL")
    return tuple(out)


def check_host(host: str, port: int, allow: Iterable[str] = ()) -> tuple[IPAddress, ...]:
    """Resolve `host` and return its addresses; raise Refused if any of them may not be contacted."""
    allowed = AllowList.parse(allow)
    name = host.strip("[]").rstrip(".").lower()
    addresses = resolve(name, port)
    if name in allowed.names:
        return addresses
    for address in addresses:
        reason = refusal_reason(address)
        if reason and not allowed.admits(address):
            via = "is" if parse_ip(name) is not None else f"resolves to {address}, which is"
            article = "an" if reason[0] in "aeiou" else "a"
            raise Refused(f"host {host} {via} {article} {reason} address; refusing to send requests there")
    return addresses


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, ASCII host, port) of an http(s) URL; Refused when it has none."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
    except ValueError as e:
        raise Refused(f"URL {url!r} is not valid ({e})", "send an http(s) URL") from None
    if scheme not in _DEFAULT_PORTS or not host:
        raise Refused(f"URL {url!r} is not an http(s) URL with a host", "send an http(s) URL")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise Refused(f"host {host} is not a valid host name ({e})", "check the host name of the URL") from None
    return scheme, host, port or _DEFAULT_PORTS[scheme]


def check_url(url: str, allow: Iterable[str] = ()) -> Target:
    """Check an http(s) URL's host (see check_host); the Target carries the addresses to connect to."""
    _, host, port = split_url(url)
    return Target(url, host, port, check_host(host, port, allow))
