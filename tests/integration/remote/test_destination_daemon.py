"""
Per-destination remote concurrency in a real C{twistd qmtwist} child (docs/behaviour/queue.md
5.6): a domain whose server accepts connections and never greets holds only its share of the
remote slots, and mail for another domain is delivered meanwhile. Both peers are SMTP sinks in
this process, reached through control/smtproutes.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon
from tests.integration.remote.peers import SMTPSinkFactory, listen
from tests.integration.test_faq_daemon import NO_LISTENERS, cli, logged
from tests.support import until

ME = "test.example"


@pytest.fixture
def world(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home, me=ME)
    slow = SMTPSinkFactory(holdConnections=[])
    fast = SMTPSinkFactory()
    slowPort, slowNumber = listen(slow)
    fastPort, fastNumber = listen(fast)
    with open(os.path.join(home.control, "smtproutes"), "wb") as f:
        f.write(b"slow.example:127.0.0.1:%d\nfast.example:127.0.0.1:%d\n"
                % (slowNumber, fastNumber))
    with open(os.path.join(home.control, "concurrencyremote"), "wb") as f:
        f.write(b"4\n")
    d = Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS], str(tmp_path / "log"))
    yield home, d, slow, fast
    for proto in slow.holdConnections or []:
        proto.transport.abortConnection()
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()
    pytest_twisted.blockon(slowPort.stopListening())
    pytest_twisted.blockon(fastPort.stopListening())


def inject(home: Home, *rcpts: str) -> None:
    r = cli(home, "inject", "-f", f"joe@{ME}", *rcpts, stdin=b"Subject: t\n\nhello\n")
    assert r.returncode == 0, r.stderr


@pytest_twisted.ensureDeferred
async def test_a_silent_domain_leaves_the_other_slots_to_other_domains(world) -> None:
    home, d, slow, fast = world
    d.start()
    await logged(d, "status: local 0/10 remote 0/4")
    inject(home, *[f"r{i}@slow.example" for i in range(8)])
    # half of the 4 slots: two recipients, which share one connection (one route)
    await logged(d, "status: local 0/10 remote 2/4")
    await until(lambda: len(slow.holdConnections) == 1, "the silent server's connection")
    for i in range(3):
        inject(home, f"u{i}@fast.example")
    await until(lambda: len(fast.messages) == 3, "three messages at the fast domain")
    assert sorted(m.recipients[0] for m in fast.messages) == [
        b"u0@fast.example", b"u1@fast.example", b"u2@fast.example"]
    # the log is written in batches: a slot freed by a fast delivery is taken (and its start
    # logged) before that message's "end msg"; wait for the three fast messages' ends
    await d.until(lambda: sum(x.startswith("end msg ") for x in d.lines()) == 3,
                  "the three fast messages' end lines")
    starts = [x for x in d.lines() if x.startswith("starting delivery ")]
    assert sum("slow.example" in x for x in starts) == 2, starts
    assert len(slow.holdConnections) == 1
