"""
The outbound TLS policy in a real C{twistd qmtwist} child (docs/behaviour/tls-policy.md 19):
trust anchors from control/tlsca, DNS from --dns (the loopback server in this process), the
policy cache in queue/lock/mtasts, the TLS log line and the report's TLS line in the log.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import pytest_twisted

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon, twistdWith
from tests.integration.remote.peers import SMTPSinkFactory
from tests.integration.remote.tlspeers import PolicyServer, PrivateCA, policy
from tests.integration.test_faq_daemon import NO_LISTENERS, inject, logged, start, stop

ME = "test.example"


@pytest.fixture
def world(tmp_path, loopbackDNS):
    """A home trusting a private CA, its policy server and a TLS sink as mx.sts.example."""
    from twisted.internet import reactor

    home = Home(str(tmp_path / "home"))
    setup(home, me=ME)
    ca = PrivateCA()
    with open(os.path.join(home.control, "tlsca"), "wb") as f:
        f.write(ca.pem)
    https = PolicyServer(ca.issue(["mta-sts.sts.example", "mta-sts.bad.example"]))
    https.bodies = {b"mta-sts.sts.example": policy("enforce", "mx.sts.example"),
                    b"mta-sts.bad.example": policy("enforce", "mx.elsewhere.example")}
    https.start("127.0.0.3")
    sink = SMTPSinkFactory(tlsOptions=ca.issue(["mx.sts.example", "mx.bad.example"]).options())
    port = reactor.listenTCP(0, sink, interface="127.0.0.2")
    for domain in (b"sts.example", b"bad.example"):
        loopbackDNS.mx(domain, [(10, b"mx." + domain)])
        loopbackDNS.a(b"mx." + domain, "127.0.0.2")
        loopbackDNS.a(b"mta-sts." + domain, "127.0.0.3")
        loopbackDNS.txt(b"_mta-sts." + domain, b"v=STSv1; id=1")
    twistd = twistdWith(
        "import functools\n"
        "from qmtwist.remote import agent\n"
        f"agent.RemoteAgent = functools.partial(agent.RemoteAgent, mxPort={port.getHost().port},"
        f" httpsPort={https.port.getHost().port}, dnsTimeout=(1, 1))")
    d = Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS,
                               "--dns", f"127.0.0.1:{loopbackDNS.port}"],
               str(tmp_path / "log"), twistd=twistd)
    yield home, d, sink, https
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(https.stop())


async def reportOf(d: Daemon, n: int) -> str:
    """The log line with delivery C{n}'s report, without the message number it names."""
    line = await d.until(
        lambda: next((x for x in d.lines() if x.startswith(f"delivery {n}: ")), None),
        f"delivery {n}'s report")
    return re.sub(r"^(delivery \d+): msg \d+: ", r"\1: ", line)


@pytest_twisted.ensureDeferred
async def test_daemonEnforcesMTASTSAndLogsTLS(world) -> None:
    home, d, sink, https = world
    await start(d)
    try:
        inject(home, "joe@" + ME, "bob@sts.example", b"Subject: sts\n\nverified\n")
        report = await reportOf(d, 1)
        assert re.fullmatch(r"delivery 1: success: 127\.0\.0\.2_accepted_message\./Remote_host_"
                            r"said:_250_ok_1762326189_qp_7/TLS:_TLSv1\.[23]_\S+,_certificate_"
                            r"verified_for_mx\.sts\.example_\(MTA-STS_enforce\)\./", report), report
        tls = await logged(d, "TLS to 127.0.0.2 (mx.sts.example): ")
        assert tls.endswith("; certificate verified for mx.sts.example (MTA-STS enforce); "
                            "peer CN=mx.sts.example"), tls
        [got] = sink.messages
        assert got.tls and got.recipients == [b"bob@sts.example"]

        inject(home, "joe@" + ME, "bob@bad.example", b"Subject: sts\n\nunlisted\n")
        report = await reportOf(d, 2)
        assert report == ("delivery 2: deferral: Sorry,_MTA-STS_policy_of_bad.example_lists_"
                          "none_of_its_MX_hosts_(mx.bad.example)._(#4.7.5)/")
        assert len(sink.messages) == 1
    finally:
        assert await stop(d) == 0
    with open(os.path.join(home.queue.sub("lock"), "mtasts"), "rb") as f:
        cached = json.loads(f.read())
    assert sorted(cached) == ["bad.example", "sts.example"]
    assert cached["sts.example"]["mx"] == ["mx.sts.example"]
    assert sorted(host for host, _path in https.requests) == [b"mta-sts.bad.example",
                                                              b"mta-sts.sts.example"]
