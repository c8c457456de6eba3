"""
C{qmtwist ctl hold} on a message whose delivery pass has begun (docs/behaviour/queue-control.md
17.4), on a running C{twistd -n qmtwist}: with C{concurrencylocal} 1, a slow local program
delivery (it waits for a gate file) holds the only slot while the message's two other
recipients wait for it. The hold lets the running delivery finish and be recorded, starts
nothing new for the message, and holds across SIGALRM and a restart; release and retry
deliver the rest.
"""

from __future__ import annotations

import os
import re

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon
from tests.integration.test_queue_control import (
    ME, NO_LISTENERS, cli, newMessages, queueJson, started)


def maildir(home: Home) -> list[str]:
    return os.listdir(os.path.join(home.alias, "Maildir", "new"))


def test_hold_during_a_pass(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home, me=ME)
    gate = str(tmp_path / "gate")
    with open(os.path.join(home.control, "concurrencylocal"), "w") as f:
        f.write("1\n")
    for name, line in (("slow", f"|while [ ! -e {gate} ]; do sleep 0.05; done\n"),
                       ("a", "./Maildir/\n"), ("b", "./Maildir/\n"), ("marker", "./Maildir/\n")):
        path = os.path.join(home.alias, ".qmail-" + name)
        with open(path, "w") as f:
            f.write(line)
        os.chmod(path, 0o644)
    d = Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS], str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine("status: local 0/1 remote 0/20")
        r = cli(home, "inject", "-f", f"joe@{ME}", f"slow@{ME}", f"a@{ME}", f"b@{ME}",
                stdin=b"Subject: held in its pass\n\nhello\n")
        assert r.returncode == 0, r.stderr
        d.waitFor(lambda: len(newMessages(d)) == 1, "the message")
        [n] = newMessages(d)
        d.waitFor(lambda: started(d, n), "the slow delivery")
        [slow] = started(d, n)
        assert slow.endswith(f"slow@{ME}"), slow
        number = re.match(r"starting delivery (\d+):", slow).group(1)

        r = cli(home, "ctl", "hold", str(n))
        assert (r.returncode, r.stderr) == (0, b"")
        row = queueJson(home)[n]
        assert row["held"] is True
        assert sorted(x["address"] for x in row["recipients"]) == [
            f"a@{ME}", f"b@{ME}", f"slow@{ME}"]

        # the running delivery finishes and is recorded
        open(gate, "w").close()
        d.waitLine(f"delivery {number}: msg {n}: success: ")
        d.waitFor(lambda: sorted(x["address"] for x in queueJson(home)[n]["recipients"])
                  == [f"a@{ME}", f"b@{ME}"], "slow@ recorded as done")
        # nothing new starts for it: a later message gets the free slot and is delivered,
        # while a@ and b@ (ahead of it in the ready queue) stay undelivered
        r = cli(home, "inject", "-f", f"joe@{ME}", f"marker@{ME}",
                stdin=b"Subject: marker\n\nhello\n")
        assert r.returncode == 0, r.stderr
        d.waitFor(lambda: len(newMessages(d)) == 2, "the marker message")
        marker = newMessages(d)[1]
        d.waitLine(f"end msg {marker}")
        assert started(d, n) == [slow]
        assert len(maildir(home)) == 1  # the marker only

        # SIGALRM and a restart keep it held
        assert cli(home, "ctl", "alrm").returncode == 0
        assert d.stop() == 0
        d.start()
        d.waitLine("status: local 0/1 remote 0/20")
        assert cli(home, "ctl", "alrm").returncode == 0
        r = cli(home, "inject", "-f", f"joe@{ME}", f"marker@{ME}",
                stdin=b"Subject: marker 2\n\nhello\n")
        assert r.returncode == 0, r.stderr
        d.waitFor(lambda: len(newMessages(d)) == 1, "the second marker")
        d.waitLine(f"end msg {newMessages(d)[0]}")
        assert started(d, n) == []
        assert queueJson(home)[n]["held"] is True

        # release + retry: a@ and b@ are delivered, slow@ is not run again
        assert cli(home, "ctl", "release", str(n)).returncode == 0
        assert cli(home, "ctl", "retry", str(n)).returncode == 0
        d.waitLine(f"end msg {n}")
        assert sorted(x.rsplit(" ", 1)[1] for x in started(d, n)) == [f"a@{ME}", f"b@{ME}"]
        assert len(maildir(home)) == 4
    finally:
        assert d.stop() == 0
