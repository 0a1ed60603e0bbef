"""The Host header of a request: one, and a valid `host[:port]` (RFC 9110 §7.2), or a 400 explains why."""

from __future__ import annotations

import ipaddress
import re

from twisted.web.iweb import IRequest

# uri-host [":" port]: an IP literal in brackets, or a reg-name (IPv4 addresses are reg-names too).
_HOST = re.compile(r"(?:\[(?P<literal>[0-9A-Fa-f:.]+)\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")


def host_problem(request: IRequest) -> str | None:
    """What is wrong with the request's Host header, or None when it is fine.

    HTTP/1.1 needs exactly one (RFC 9112 §3.2); HTTP/1.0 may go without. An empty value is allowed
    (a target without authority). Names that fit the grammar but no DNS name (`.example`, a label over
    63 octets) are left to werkzeug, which the caller asks next.
    """
    values = request.requestHeaders.getRawHeaders(b"host", [])
    if not values:
        return "the request has no Host header" if request.clientproto == b"HTTP/1.1" else None
    if len(values) > 1:
        return "the request has more than one Host header"
    match = _HOST.fullmatch(values[0].decode("latin-1"))
    if match is None:
        return "the Host header is not a host name or address with an optional port"
    literal = match.group("literal")
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return "the Host header's address in brackets is not an IPv6 address"
    return None
