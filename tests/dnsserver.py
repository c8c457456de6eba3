"""
A real DNS server on loopback for tests: twisted.names with an in-memory zone.

Usage (inside a Twisted test)::

    dns = LoopbackDNS()
    dns.mx(b"movie.edu", [(10, b"mailhost.movie.edu")])
    dns.a(b"mailhost.movie.edu", "127.0.0.2")
    servers = dns.start()          # [("127.0.0.1", port)], UDP and TCP on the same port
    ...
    yield dns.stop()

Names under a zone given to L{LoopbackDNS.silence} get no answer at all (the client times out);
names under L{LoopbackDNS.servfail} get SERVFAIL; a name with no records gets NXDOMAIN; a name
with records but none of the asked type gets an empty answer (NODATA). Records can be changed
while the server runs (e.g. un-silence a zone to show that a deferred delivery then succeeds).
A pytest fixture C{loopbackDNS} is provided for tests that want one started and stopped for them.

TXT records (L{LoopbackDNS.txt}) and TLSA records (L{LoopbackDNS.tlsa}, type 52, which
twisted.names has no class for: L{Record_TLSA}) can be served too; answers for names under a zone
given to L{LoopbackDNS.secure} carry the AD bit, as a validating resolver's would (RFC 4035 3.2.3;
DANE, RFC 7672, trusts TLSA records only then).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.names import authority, common, dns, server
from twisted.python import failure

TLSA = 52


class Record_TLSA:
    """
    A TLSA record (RFC 6698 2.1): usage, selector, matching type and the association data.
    twisted.names has no class for type 52; this one encodes and decodes it.
    """

    TYPE = TLSA
    fancybasename = "TLSA"

    def __init__(self, usage: int = 0, selector: int = 0, matching: int = 0, data: bytes = b"",
                 ttl: int | None = 0) -> None:
        self.usage, self.selector, self.matching, self.data = usage, selector, matching, data
        self.ttl = ttl

    def encode(self, strio: Any, compDict: Any = None) -> None:
        strio.write(struct.pack("!BBB", self.usage, self.selector, self.matching) + self.data)

    def decode(self, strio: Any, length: int | None = None) -> None:
        raw = strio.read(length or 0)
        self.usage, self.selector, self.matching = struct.unpack("!BBB", raw[:3])
        self.data = raw[3:]

    def __hash__(self) -> int:
        return hash((self.usage, self.selector, self.matching, self.data))

    def __repr__(self) -> str:
        return f"<TLSA {self.usage} {self.selector} {self.matching} {self.data.hex()}>"


class _Zone(authority.FileAuthority):
    """FileAuthority for the root, fed from a dict, with silent and failing subtrees."""

    def __init__(self, owner: LoopbackDNS) -> None:
        common.ResolverBase.__init__(self)
        soa = dns.Record_SOA(
            mname=b"ns.test", rname=b"root.ns.test", serial=1, refresh=60, minimum=60, expire=60
        )
        self.soa = (b"", soa)
        self.records = owner.records
        self._owner = owner

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> defer.Deferred:
        self._owner.queries.append((name.lower(), type))
        if self._owner._under(name, self._owner.silent):
            return defer.Deferred()  # never fires: the server never answers
        if self._owner._under(name, self._owner.failing):
            return defer.fail(failure.Failure(RuntimeError("servfail zone")))
        return super()._lookup(name, cls, type, timeout)


class _Factory(server.DNSServerFactory):
    """Sets the AD bit on answers for names under the owner's L{LoopbackDNS.secure} zones."""

    def __init__(self, owner: LoopbackDNS, **kw: Any) -> None:
        super().__init__(**kw)
        self._owner = owner

    def _responseFromMessage(self, message: Any, *args: Any, **kw: Any) -> Any:
        response = super()._responseFromMessage(message, *args, **kw)
        if message.queries and self._owner._under(message.queries[0].name.name,
                                                  self._owner.secured):
            response.authenticData = True
        return response


class LoopbackDNS:
    """
    A twisted.names authoritative server on 127.0.0.1 (UDP and TCP, one port).

    @ivar records: lowercased name -> list of C{dns.Record_*}; edit freely.
    @ivar queries: C{(name, type)} of every query received, for assertions.
    """

    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.records: dict[bytes, list[Any]] = {}
        self.silent: set[bytes] = set()
        self.failing: set[bytes] = set()
        self.secured: set[bytes] = set()
        self.queries: list[tuple[bytes, int]] = []
        self._ports: list[Any] = []
        self.port = 0

    # -- zone editing ---------------------------------------------------------------------
    def add(self, name: bytes, record: Any) -> None:
        """Add one record (a C{dns.Record_*}) at C{name}."""
        self.records.setdefault(name.lower(), []).append(record)

    def mx(self, name: bytes, exchanges: list[tuple[int, bytes]]) -> None:
        """MX records C{[(preference, host), ...]}; a host C{b""} is a null MX."""
        for pref, host in exchanges:
            self.add(name, dns.Record_MX(pref, host, ttl=0))

    def a(self, name: bytes, *addresses: str) -> None:
        for ip in addresses:
            self.add(name, dns.Record_A(ip, ttl=0))

    def aaaa(self, name: bytes, *addresses: str) -> None:
        for ip in addresses:
            self.add(name, dns.Record_AAAA(ip, ttl=0))

    def cname(self, name: bytes, target: bytes) -> None:
        self.add(name, dns.Record_CNAME(target, ttl=0))

    def txt(self, name: bytes, *strings: bytes) -> None:
        """One TXT record made of C{strings} (each at most 255 bytes)."""
        self.add(name, dns.Record_TXT(*strings, ttl=0))

    def tlsa(self, name: bytes, usage: int, selector: int, matching: int, data: bytes) -> None:
        """A TLSA record at C{name} (e.g. C{_25._tcp.mx.example}); C{data} in binary."""
        self.add(name, Record_TLSA(usage, selector, matching, data, ttl=0))

    def secure(self, zone: bytes) -> None:
        """Answer for C{zone} and names under it with the AD bit set (DNSSEC-validated)."""
        self.secured.add(zone.lower())

    def silence(self, zone: bytes) -> None:
        """Never answer for C{zone} and names under it."""
        self.silent.add(zone.lower())

    def unsilence(self, zone: bytes) -> None:
        self.silent.discard(zone.lower())

    def servfail(self, zone: bytes) -> None:
        """Answer SERVFAIL for C{zone} and names under it."""
        self.failing.add(zone.lower())

    @staticmethod
    def _under(name: bytes, zones: set[bytes]) -> bool:
        name = name.lower().rstrip(b".")
        return any(name == z or name.endswith(b"." + z) for z in zones)

    # -- running --------------------------------------------------------------------------
    def start(self) -> list[tuple[str, int]]:
        """Listen on 127.0.0.1, UDP and TCP on the same free port; return the server list."""
        factory = _Factory(self, authorities=[_Zone(self)], verbose=0)
        for _ in range(20):
            # a new protocol each try: one whose port is still stopping keeps its transport
            protocol = dns.DNSDatagramProtocol(factory)
            udp = self.reactor.listenUDP(0, protocol, interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(port, factory, interface="127.0.0.1")
            except error.CannotListenError:
                udp.stopListening()
                continue
            self._ports = [udp, tcp]
            self.port = port
            return self.servers
        raise RuntimeError("no free UDP+TCP port pair on 127.0.0.1")

    @property
    def servers(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.port)]

    def stop(self) -> defer.Deferred:
        ports, self._ports = self._ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])


@pytest.fixture
def loopbackDNS():
    """A started L{LoopbackDNS}; stopped after the test."""
    import pytest_twisted

    d = LoopbackDNS()
    d.start()
    yield d
    pytest_twisted.blockon(d.stop())


def main(argv: list[str] | None = None) -> None:
    """
    Run a L{LoopbackDNS} as a child process, for tests whose parent blocks (twistd children):

        python -m tests.dnsserver --mx movie.edu=10:mailhost.movie.edu \\
            --a mailhost.movie.edu=127.0.0.2 --cname www.movie.edu=movie.edu \\
            --txt _mta-sts.movie.edu='v=STSv1; id=1' --tlsa _25._tcp.mailhost.movie.edu=3:1:1:HEX \\
            --secure movie.edu

    Prints the port on one line once listening (UDP and TCP on 127.0.0.1), then serves until
    killed.
    """
    import argparse
    import sys

    from twisted.internet import reactor

    ap = argparse.ArgumentParser()
    for kind in ("mx", "a", "aaaa", "cname", "silence", "txt", "tlsa", "secure"):
        ap.add_argument(f"--{kind}", action="append", default=[])
    args = ap.parse_args(argv)
    server = LoopbackDNS(reactor)
    for spec in args.mx:
        name, _, value = spec.partition("=")
        pref, _, host = value.partition(":")
        server.mx(name.encode(), [(int(pref), host.encode())])
    for spec in args.a:
        name, _, value = spec.partition("=")
        server.a(name.encode(), value)
    for spec in args.aaaa:
        name, _, value = spec.partition("=")
        server.aaaa(name.encode(), value)
    for spec in args.cname:
        name, _, value = spec.partition("=")
        server.cname(name.encode(), value.encode())
    for zone in args.silence:
        server.silence(zone.encode())
    for spec in args.txt:
        name, _, value = spec.partition("=")
        server.txt(name.encode(), value.encode())
    for spec in args.tlsa:
        name, _, value = spec.partition("=")
        usage, selector, matching, data = value.split(":")
        server.tlsa(name.encode(), int(usage), int(selector), int(matching), bytes.fromhex(data))
    for zone in args.secure:
        server.secure(zone.encode())
    server.start()
    sys.stdout.write(f"{server.port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
