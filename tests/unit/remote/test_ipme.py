"""
The self check's notion of "me" (docs/behaviour/remote.md 11.2): listener addresses from endpoint
strings and bound ports, the machine's interface addresses (qmail's ipme), and their expansion.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock

from qmtwist.context import Context, ControlCache
from qmtwist.plugin import listenerAddresses
from qmtwist.remote import ipme
from qmtwist.remote.agent import SELF_MX, RemoteAgent
from qmtwist.remote.mx import MailHost
from tests.conftest import logLines

IP = ipaddress.ip_address
INTERFACES = ["127.0.0.1", "192.0.2.2", "fd00::2", "::1", "fe80::fc:ff:fe00:1"]


@pytest.mark.parametrize("endpoint, expected", [
    ("tcp:25", ("0.0.0.0",)),
    ("tcp:25:interface=127.0.0.2", ("127.0.0.2",)),
    ("tcp:port=25:interface=", ("0.0.0.0",)),
    ("tcp:25:127.0.0.3", ("127.0.0.3",)),  # interface given positionally
    ("tcp:25:backlog=5", ("0.0.0.0",)),
    ("ssl:465:privateKey=/a\\:b.pem:interface=10.1.2.3", ("10.1.2.3",)),
    ("ssl:465", ("0.0.0.0",)),
    ("tcp6:25", ("::",)),
    ("tcp6:25:interface=\\:\\:1", ("::1",)),
    ("tcp6:port=25:interface=2001\\:db8\\:\\:5", ("2001:db8::5",)),
    ("tcp6:25:50:\\:\\:1", ("::1",)),  # port, backlog, interface
    ("TCP6:25:interface=fe80\\:\\:1%eth0", ("fe80::1%eth0",)),
    ("systemd:domain=INET:index=0", ("0.0.0.0",)),
    ("systemd:domain=INET6:name=smtp", ("::",)),
    ("systemd:domain=UNIX:index=0", ()),
    ("unix:/run/smtp.sock", ()),
    ("someplugin:25:whatever", ("::",)),  # unknown: all addresses, as qmail
])
def test_endpointAddresses(endpoint: str, expected: tuple[str, ...]) -> None:
    assert ipme.endpointAddresses(endpoint) == expected


def test_listenerAddressesUnescapesIPv6() -> None:
    """The plugin's derivation honours endpoint-string escapes (it split at every colon)."""
    assert listenerAddresses({"smtp": "tcp6:25:interface=\\:\\:1", "qmtp": "none"}) == ("::1",)
    assert listenerAddresses({"smtp": "tcp:25", "qmtp": "tcp:209"}) == ("0.0.0.0",)
    assert listenerAddresses({"smtp": "systemd:domain=INET6:index=0", "qmtp": "none"}) == ("::",)
    assert listenerAddresses({"smtp": "none", "qmtp": "none"}) == ()


def test_listenerAddressesPrefersTheBoundPort() -> None:
    """A listening service tells its real address: a systemd socket bound to one address."""
    def service(name: str, host) -> SimpleNamespace:
        return SimpleNamespace(name=name, port=SimpleNamespace(getHost=lambda: host))

    options = {"smtp": "systemd:domain=INET:index=0", "qmtp": "tcp6:209"}
    services = [service("smtp", IPv4Address("TCP", "192.0.2.9", 25)),
                SimpleNamespace(name="qmtp", port=None)]  # not listening yet: from the string
    assert listenerAddresses(options, services) == ("192.0.2.9", "::")
    services = [service("smtp", IPv6Address("TCP", "::", 25)), service("pop3", None)]
    assert listenerAddresses(options, services) == ("::",)
    assert ipme.boundAddress(SimpleNamespace(getHost=lambda: UNIXAddress(b"/x"))) is None


def test_boundAddressOfARealPort() -> None:
    from twisted.internet import protocol, reactor

    port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    try:
        assert ipme.boundAddress(port) == "127.0.0.1"
    finally:
        port.stopListening()
    wildcard = reactor.listenTCP(0, protocol.Factory())
    try:
        assert ipme.boundAddress(wildcard) == "0.0.0.0"
    finally:
        wildcard.stopListening()


def _ifreq(name: bytes, family: int, packed: bytes, size: int = 40) -> bytes:
    entry = name.ljust(16, b"\0") + struct.pack("=HH", family, 0) + packed
    return entry.ljust(size, b"\0")


def test_parseIfconf() -> None:
    data = (_ifreq(b"lo", socket.AF_INET, socket.inet_aton("127.0.0.1"))
            + _ifreq(b"eth0", socket.AF_INET, socket.inet_aton("192.0.2.2"))
            + _ifreq(b"odd", socket.AF_INET6, b"\1" * 20)
            + _ifreq(b"lo", socket.AF_INET, socket.inet_aton("127.0.0.9")))
    assert ipme.parseIfconf(data, 40) == ["127.0.0.1", "192.0.2.2", "127.0.0.9"]
    small = _ifreq(b"lo", socket.AF_INET, socket.inet_aton("10.0.0.1"), 32)
    assert ipme.parseIfconf(small + b"\0" * 5, 32) == ["10.0.0.1"]  # a cut-off tail is ignored


def test_parseIfInet6() -> None:
    text = ("fd000000000000000000000000000002 04 40 00 82     eth0\n"
            "00000000000000000000000000000001 01 80 10 80       lo\n"
            "garbage\n"
            "zz000000000000000000000000000001 01 80 10 80       lo\n"
            "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n")
    assert ipme.parseIfInet6(text) == ["fd00::2", "::1", "fe80::fc:ff:fe00:1"]


@pytest.mark.skipif(not os.path.exists("/proc/net/dev"), reason="reads Linux interfaces")
def test_interfaceAddressesMatchIp() -> None:
    """The ioctl and /proc reading agree with what `ip -o addr` lists."""
    found = ipme.interfaceAddresses()
    assert "127.0.0.1" in found
    ip = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if ip is None:
        return
    out = subprocess.run([ip, "-o", "addr", "show"], capture_output=True, text=True).stdout
    listed = {str(IP(line.split()[3].split("/")[0])) for line in out.splitlines()
              if len(line.split()) > 3 and line.split()[2] in ("inet", "inet6")}
    assert set(found) == listed


def test_selfAddresses() -> None:
    v4 = ipme.selfAddresses(["0.0.0.0"], INTERFACES)
    assert v4 == {IP("0.0.0.0"), IP("127.0.0.1"), IP("192.0.2.2")}
    both = ipme.selfAddresses(["::"], INTERFACES)
    assert both == {IP("::"), IP("0.0.0.0"), *map(IP, INTERFACES)}
    assert ipme.selfAddresses(["127.0.0.7", "[::1]", "junk"], INTERFACES) == {IP("127.0.0.7"),
                                                                            IP("::1")}
    assert ipme.isMine("192.0.2.2", v4)
    assert ipme.isMine("::ffff:192.0.2.2", v4)  # IPv4-mapped
    assert not ipme.isMine("127.0.0.5", v4)  # loopback, but no interface has it
    assert not ipme.isMine("fd00::2", v4)  # an IPv4 listener is not reached by IPv6
    assert ipme.isMine("fd00:0::2", both)
    assert not ipme.isMine("not an address", both)
    assert ipme.hasWildcard(["127.0.0.1", "::"]) and not ipme.hasWildcard(["127.0.0.1", "x"])


# -- the agent's use of them ----------------------------------------------------------------


def makeAgent(home, localAddresses, interfaces):
    reactor = MemoryReactorClock()
    ctx = Context(home, reactor, None, ControlCache(home), defer.maybeDeferred)
    return RemoteAgent(ctx, resolver=object(), localAddresses=localAddresses,
                       interfaces=interfaces), reactor


def selfCheck(agent: RemoteAgent, hosts: list[MailHost]):
    out: list = []
    mine = defer.ensureDeferred(agent._myAddresses())
    mine.addCallback(lambda m: agent._selfCheck(agent.ctx.controls.current(), hosts, m))
    mine.addBoth(out.append)
    [result] = out
    return result


def test_wildcardListenerCountsInterfaceAddresses(home) -> None:
    calls: list[int] = []

    def interfaces() -> list[str]:
        calls.append(1)
        return INTERFACES

    agent, reactor = makeAgent(home, ("0.0.0.0",), interfaces)
    ext = MailHost(b"mx.example", 10, ("192.0.2.2",))
    loop5 = MailHost(b"five.example", 10, ("127.0.0.5",))
    other = MailHost(b"other.example", 5, ("127.0.0.2",))
    assert selfCheck(agent, [loop5]) == [loop5]  # not an interface address: not me
    assert selfCheck(agent, [other, ext]) == [other]
    assert selfCheck(agent, [ext]).value.text == SELF_MX
    assert calls == [1]  # cached
    reactor.advance(RemoteAgent.interfaceCacheSeconds)
    selfCheck(agent, [ext])
    assert calls == [1, 1]


def test_boundListenerIgnoresInterfaces(home) -> None:
    agent, _r = makeAgent(home, lambda: ["127.0.0.7"], lambda: pytest.fail("not needed"))
    ext = MailHost(b"mx.example", 10, ("192.0.2.2",))
    assert selfCheck(agent, [ext]) == [ext]
    assert selfCheck(agent, [MailHost(b"x.example", 10, ("127.0.0.7",))]).value.text == SELF_MX


def test_unreadableInterfacesFallBackToLoopback(home, logEvents) -> None:
    def broken() -> list[str]:
        raise OSError("no ioctl here")

    agent, _r = makeAgent(home, ("::",), broken)
    assert selfCheck(agent, [MailHost(b"x", 10, ("::1",))]).value.text == SELF_MX
    ext = MailHost(b"mx.example", 10, ("192.0.2.2",))
    assert selfCheck(agent, [ext]) == [ext]
    assert any("unable to read the interface addresses (no ioctl here)" in line
               for line in logLines(logEvents))


def test_pluginWiresTheListeners(home) -> None:
    """buildServices gives the remote agent the SMTP and QMTP listeners' addresses, live."""
    from twisted.internet import reactor

    from qmtwist.plugin import buildServices

    built = buildServices({"home": home.path, "smtp": "tcp:0", "pop3": "none",
                           "qmtp": "tcp:0:interface=127.0.0.4"}, reactor)
    try:
        assert built.queue is not None
        remote = built.queue.agents["remote"]
        assert remote.localAddresses() == ("0.0.0.0", "127.0.0.4")
        smtp = next(s for s in built.top if getattr(s, "name", None) == "smtp")
        smtp.privilegedStartService()
        smtp.port.getHost = lambda: IPv4Address("TCP", "192.0.2.44", 25)  # as a systemd socket
        assert remote.localAddresses() == ("192.0.2.44", "127.0.0.4")
        smtp.port.stopListening()
    finally:
        if built.queue._mutexFd >= 0:
            os.close(built.queue._mutexFd)
