"""Which client addresses may call `POST /-/refresh` (NIXFORGE_REFRESH_FROM): loopback, any, or CIDRs."""

from __future__ import annotations

import ipaddress

from attrs import frozen

LOOPBACK = "loopback"
ANY = "any"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_refresh_from(text: str) -> tuple[str, ...]:
    """Comma-separated `loopback`, `any` or CIDRs (`10.0.0.0/8`, `2001:db8::/32`), normalised."""
    items = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if item in (LOOPBACK, ANY):
            items.append(item)
            continue
        try:
            items.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError("must be loopback, any, or comma-separated CIDRs such as 10.0.0.0/8") from None
    return tuple(items)


@frozen
class RefreshAccess:
    """The rule: `allows(host)` for the client's IP address text."""

    allowed: tuple[str, ...] = (LOOPBACK,)

    def allows(self, host: str | None) -> bool:
        """Tell whether a client at `host` (an IP address; None or a non-IP for a UNIX socket) may refresh."""
        if ANY in self.allowed:
            return True
        try:
            address = ipaddress.ip_address((host or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for item in self.allowed:
            if item == LOOPBACK:
                if address.is_loopback:
                    return True
            elif address in ipaddress.ip_network(item):
                return True
        return False
