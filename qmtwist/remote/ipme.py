"""
The addresses that are "me" for the self check of remote delivery (qmail's ipme.c;
docs/behaviour/remote.md 11.2).

qmail-remote treats an MX host as itself when one of its addresses is an address of one of the
machine's network interfaces. qmtwist narrows that to the listeners of this instance (so several
instances on one machine, FAQ 7.4, can be each other's MX): a listener bound to one address
contributes that address; a listener bound to the wildcard address (C{tcp:25}, C{tcp6:25},
usually a C{systemd:} socket) contributes every interface address of the machine, read as
qmail's ipme does (C{SIOCGIFCONF} for IPv4, C{/proc/net/if_inet6} for IPv6), plus the
wildcard address itself (RFC 1122 3.2.1.3: C{0.0.0.0} is "this host").

L{endpointAddresses} and L{boundAddress} say what a listener is bound to; L{selfAddresses}
expands the wildcards with L{interfaceAddresses} (which blocks: run it on a thread);
L{isMine} compares. Everything here is pure except L{interfaceAddresses}.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from typing import Any, Iterable

from twisted.internet import address, endpoints

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

WILDCARD_V4 = "0.0.0.0"
WILDCARD_V6 = "::"

#: What L{interfaceAddresses} falls back to when the interfaces cannot be read.
LOOPBACK = frozenset({"127.0.0.1", "::1"})

SIOCGIFCONF = 0x8912  # Linux
IF_INET6 = "/proc/net/if_inet6"

# Where an endpoint type takes the interface positionally (index into the parsed arguments,
# the type being argument 0), as Twisted's own parsers declare them.
_INTERFACE_ARG = {"tcp": 2, "ssl": 5, "tcp6": 3}


def endpointAddresses(description: str) -> tuple[str, ...]:
    """
    The addresses a Twisted server endpoint string listens on, parsed the way
    C{serverFromString} parses it (so C{tcp6:25:interface=\\:\\:1} gives C{::1}).

    C{tcp:} and C{ssl:} give their C{interface=} or L{WILDCARD_V4}; C{tcp6:} its C{interface=}
    or L{WILDCARD_V6}; C{systemd:} the wildcard of its C{domain=} (the socket's real address is
    known only once adopted: see L{boundAddress}); C{unix:} nothing. Any other type (an endpoint
    plugin) counts as L{WILDCARD_V6}, all of the machine's addresses, as for qmail.
    """
    args, kw = endpoints._parse(description)
    kind = str(args[0]).lower() if args else ""
    if kind == "unix":
        return ()
    if kind == "systemd":
        domain = str(kw.get("domain", args[1] if len(args) > 1 else "")).upper()
        if domain == "UNIX":
            return ()
        return (WILDCARD_V4,) if domain == "INET" else (WILDCARD_V6,)
    if kind not in _INTERFACE_ARG:
        return (WILDCARD_V6,)
    position = _INTERFACE_ARG[kind]
    interface = kw.get("interface", args[position] if len(args) > position else "")
    interface = str(interface).strip().strip("[]")
    if not interface:
        return (WILDCARD_V6,) if kind == "tcp6" else (WILDCARD_V4,)
    return (interface,)


def boundAddress(port: Any) -> str | None:
    """The IP address a listening port (C{IListeningPort}) is bound to, or L{None} (not
    listening, or not an IP socket)."""
    if port is None:
        return None
    try:
        host = port.getHost()
    except Exception:
        return None
    if isinstance(host, (address.IPv4Address, address.IPv6Address)):
        return str(host.host)
    return None


def normalize(text: str) -> IPAddress | None:
    """
    C{text} as an address for comparison: brackets and an IPv6 zone (C{%eth0}) removed, an
    IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}) as its IPv4 address; L{None} if no address.
    """
    text = text.strip().strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def hasWildcard(listening: Iterable[str]) -> bool:
    """Whether one of the listening addresses is a wildcard (then interfaces are needed)."""
    return any(ip is not None and ip.is_unspecified for ip in map(normalize, listening))


def selfAddresses(listening: Iterable[str], interfaces: Iterable[str] = ()) -> frozenset[IPAddress]:
    """
    The addresses that count as this instance.

    @param listening: the addresses the listeners are bound to (L{endpointAddresses},
        L{boundAddress}).
    @param interfaces: the machine's interface addresses (L{interfaceAddresses}); used for
        wildcard listeners only: L{WILDCARD_V4} adds the IPv4 ones, L{WILDCARD_V6} (dual-stack)
        all of them.
    """
    found = [ip for ip in map(normalize, interfaces) if ip is not None]
    mine: set[IPAddress] = set()
    for ip in map(normalize, listening):
        if ip is None:
            continue
        mine.add(ip)
        if ip.is_unspecified:
            if ip.version == 6:
                mine.add(ipaddress.IPv4Address(WILDCARD_V4))
            mine.update(f for f in found if ip.version == 6 or f.version == 4)
    return frozenset(mine)


def isMine(ip: str, mine: frozenset[IPAddress]) -> bool:
    """Whether the address C{ip} (from DNS) is one of L{selfAddresses}."""
    addr = normalize(ip)
    return addr is not None and addr in mine


# -- reading the interfaces (blocking) ------------------------------------------------------


def _ifreqSize() -> int:
    # struct ifreq: IFNAMSIZ (16) + a union whose largest member, struct ifmap, is 24 bytes
    # with 64-bit longs and 16 with 32-bit ones.
    return 40 if struct.calcsize("P") == 8 else 32


def parseIfconf(data: bytes, entrySize: int | None = None) -> list[str]:
    """
    The IPv4 addresses in the C{ifc_buf} filled by C{SIOCGIFCONF} (Linux layout: each
    C{struct ifreq} is the interface name, 16 bytes, then a C{sockaddr_in}).
    """
    size = entrySize or _ifreqSize()
    out = []
    for off in range(0, len(data) - size + 1, size):
        (family,) = struct.unpack_from("=H", data, off + 16)
        if family == socket.AF_INET:
            out.append(socket.inet_ntoa(data[off + 20 : off + 24]))
    return out


def parseIfInet6(text: str) -> list[str]:
    """
    The IPv6 addresses in C{/proc/net/if_inet6} (one line per address: 32 hex digits, then
    the interface index, prefix length, scope, flags and name); malformed lines are ignored.
    """
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or len(fields[0]) != 32:
            continue
        try:
            out.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
        except ValueError:
            continue
    return out


def _ifconfIPv4() -> list[str]:
    import array
    import fcntl

    if not sys.platform.startswith("linux"):
        raise OSError(f"SIOCGIFCONF layout unknown on {sys.platform}")
    entry = _ifreqSize()
    count = 32
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while True:
            size = count * entry
            buf = array.array("B", bytes(size))
            request = struct.pack("iP", size, buf.buffer_info()[0])
            (length, _ptr) = struct.unpack("iP", fcntl.ioctl(s.fileno(), SIOCGIFCONF, request))
            if length + entry <= size:  # room to spare: nothing was cut off (as ipme.c)
                return parseIfconf(buf.tobytes()[:length], entry)
            count *= 2


def interfaceAddresses() -> frozenset[str]:
    """
    The machine's interface addresses, IPv4 by C{SIOCGIFCONF} and IPv6 from
    C{/proc/net/if_inet6} (absent when IPv6 is off). Blocks: call it on a thread.

    @raise OSError: the IPv4 addresses cannot be read (not Linux, or the ioctl failed).
    """
    found = set(_ifconfIPv4())
    try:
        with open(IF_INET6, encoding="ascii", errors="replace") as f:
            found.update(parseIfInet6(f.read()))
    except OSError:
        pass
    return frozenset(found)
