"""
The control socket's protocol (qmtwist.queue.ctlserver) on a StringTransport, over a real queue
service (the harness of test_service: a Clock, synchronous file operations, spy agents) and a
real queue directory (docs/behaviour/queue-control.md 17.2, 17.4).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest_twisted
from twisted.internet.testing import StringTransport

from qmtwist.ctlclient import controlSocket

from qmtwist.delivery import Report
from qmtwist.queue.admin import QueueAdmin
from qmtwist.queue.ctlserver import ControlFactory, ControlService, queueGroup
from qmtwist.queue.marks import readNote
from tests.conftest import logLines
from tests.unit.queue.test_service import later, makeHarness, ok


class PeerSocket:
    def __init__(self, uid: int) -> None:
        self.uid = uid

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return struct.pack("3i", 99, self.uid, 100)


class PeerTransport(StringTransport):
    """A Unix socket whose peer (SO_PEERCRED) runs as C{uid}."""

    def __init__(self, uid: int) -> None:
        super().__init__()
        self.uid = uid

    def getHandle(self) -> PeerSocket:
        return PeerSocket(self.uid)


def ask(h, request, uid: int = 0, stats=None, mayChange=None) -> dict:
    """One request through a fresh connection; the answer line decoded."""
    kw = {} if mayChange is None else {"mayChange": mayChange}
    proto = ControlFactory(QueueAdmin(h.service), stats, **kw).buildProtocol(None)
    t = PeerTransport(uid)
    proto.makeConnection(t)
    line = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
    proto.dataReceived(line)
    value = t.value()
    assert value.endswith(b"\n") and value.count(b"\n") == 1, value
    assert t.disconnecting
    return json.loads(value)


def deferredMessage(home):
    h = makeHarness(home, remote=later)
    q = h.inject(b"joe@test.example", [b"b@elsewhere.example"])
    return h, q


def test_queue_lists_deferral_reason_and_next_attempt(home):
    h, q = deferredMessage(home)
    answer = ask(h, {"op": "queue"})
    assert answer["ok"] is True
    [m] = answer["messages"]
    ch = h.service.messages[q.id].channels["remote"]
    assert m == {
        "id": q.id, "arrival_time": os.stat(home.queue.info(q.id)).st_mtime,
        "size": os.stat(home.queue.mess(q.id)).st_size, "sender": "joe@test.example",
        "held": False, "bouncing": False,
        "recipients": [{"address": "b@elsewhere.example", "channel": "remote",
                        "delay_reason": "Try again later. (#4.3.0)\n",
                        "next_attempt": ch.scheduled}]}
    assert ch.scheduled > h.clock.seconds()
    # the note in why/ says the same for mailq in another process
    note = readNote(home.queue, q.id, h.service.messages[q.id].stamp)
    assert note["channels"]["remote"] == {"next_attempt": ch.scheduled,
                                          "reasons": {"0": "Try again later. (#4.3.0)\n"}}


def test_a_running_delivery_has_no_next_attempt(home):
    h = makeHarness(home, remote=None)
    h.inject(b"joe@test.example", [b"b@elsewhere.example"])
    [m] = ask(h, {"op": "queue"})["messages"]
    assert m["recipients"][0]["next_attempt"] is None
    assert m["recipients"][0]["delay_reason"] is None


def test_hold_keeps_message_from_passes_until_release(home, logEvents):
    h, q = deferredMessage(home)
    assert ask(h, {"op": "hold", "ids": [q.id]}) == {"ok": True, "done": [q.id], "errors": []}
    with open(home.queue.sub("hold", q.id)) as f:
        assert f.read() == h.service.messages[q.id].stamp + "\n"
    assert ask(h, {"op": "queue"})["messages"][0]["held"] is True
    h.clock.advance(4000)  # well past the next pass
    h.service.alrm()
    h.clock.advance(0)
    assert len(h.remote.requests) == 1
    assert ask(h, {"op": "release", "ids": [q.id]})["ok"] is True
    assert not os.path.exists(home.queue.sub("hold", q.id))
    assert len(h.remote.requests) == 2  # its pass came due while held: at once
    lines = logLines(logEvents)
    assert f"hold msg {q.id}" in lines and f"release msg {q.id}" in lines


def test_hold_survives_restart_and_a_stale_marker_is_dropped(home):
    h, q = deferredMessage(home)
    ask(h, {"op": "hold", "ids": [q.id]})
    with open(home.queue.sub("hold", "12345"), "w") as f:
        f.write("1.P12345\n")  # a marker for a message that is not there
    h.service.stopService()
    h2 = makeHarness(home, remote=later)
    h2.service.alrm()
    h2.clock.advance(0)
    assert h2.remote.requests == []
    assert h2.service.held == {q.id}
    assert not os.path.exists(home.queue.sub("hold", "12345"))
    assert ask(h2, {"op": "queue"})["messages"][0]["held"] is True
    # the deferral text from before the restart comes from the note
    [r] = ask(h2, {"op": "queue"})["messages"][0]["recipients"]
    assert r["delay_reason"] == "Try again later. (#4.3.0)\n"


def test_retry_delivers_now_and_refuses_a_held_message(home):
    h, q = deferredMessage(home)
    h.remote.answer = ok
    assert ask(h, {"op": "retry", "ids": [q.id]})["ok"] is True
    assert len(h.remote.requests) == 2
    assert h.queueFiles() == []
    h.service.stopService()

    h, q = deferredMessage(home)
    ask(h, {"op": "hold", "ids": [q.id]})
    assert ask(h, {"op": "retry", "ids": [q.id]}) == {
        "ok": False, "done": [], "errors": [f"msg {q.id}: held; release it first"]}
    assert len(h.remote.requests) == 1


def test_delete_removes_every_file_without_bounce(home, logEvents):
    h, q = deferredMessage(home)
    ask(h, {"op": "hold", "ids": [q.id]})
    assert ask(h, {"op": "delete", "ids": [q.id]}) == {"ok": True, "done": [q.id], "errors": []}
    assert h.queueFiles() == []
    assert q.id not in h.service.messages and q.id not in h.service.held
    assert h.todo() == []
    lines = logLines(logEvents)
    assert f"delete msg {q.id}: removed by qmtwist ctl, no bounce" in lines
    assert not any(x.startswith("bounce msg") for x in lines)
    h.clock.advance(4000)
    assert len(h.remote.requests) == 1


def test_delete_refused_while_a_delivery_runs(home):
    h = makeHarness(home, remote=None)
    q = h.inject(b"joe@test.example", [b"b@elsewhere.example"])
    answer = ask(h, {"op": "delete", "ids": [q.id]})
    assert answer == {"ok": False, "done": [], "errors": [
        f"msg {q.id}: a delivery is running; try again when it has reported"]}
    assert os.path.exists(home.queue.mess(q.id))
    h.remote.held[0].callback(Report.deferral(b"later\n"))
    assert ask(h, {"op": "delete", "ids": [q.id]})["ok"] is True
    assert h.queueFiles() == []


def test_unknown_id_is_refused_and_known_ones_still_done(home):
    h, q = deferredMessage(home)
    assert ask(h, {"op": "hold", "ids": [999999, q.id]}) == {
        "ok": False, "done": [q.id], "errors": ["msg 999999: not in the queue"]}


def test_changes_need_root_or_the_daemons_uid(home):
    h, q = deferredMessage(home)
    answer = ask(h, {"op": "hold", "ids": [q.id]}, uid=4321, mayChange=lambda uid: uid == 0)
    assert answer["ok"] is False and "permission denied" in answer["errors"][0]
    assert h.service.held == set()
    # listing is for anyone who can connect
    assert ask(h, {"op": "queue"}, uid=4321, mayChange=lambda uid: False)["ok"] is True


def test_bad_requests(home):
    h, _ = deferredMessage(home)
    assert ask(h, b"not json\n")["ok"] is False
    assert ask(h, {"op": "frobnicate"})["errors"] == ["unknown request 'frobnicate'"]
    for ids in (None, [], ["7"], [0], [True]):
        assert ask(h, {"op": "delete", "ids": ids})["errors"] == ["delete: want message numbers"]
    assert ask(h, b"x" * (2 << 20))["errors"] == ["request too long"]


def test_stats_from_the_metrics_callable_or_no_metrics(home):
    h, _ = deferredMessage(home)
    assert ask(h, {"op": "stats"}) == {"ok": False, "errors": ["no metrics"]}
    assert ask(h, {"op": "stats"}, stats=lambda: {"qmtwist_queue_messages": 1}) == {
        "ok": True, "stats": {"qmtwist_queue_messages": 1}}


def test_stats_that_cannot_be_written_as_json_get_an_error_answer(home):
    h, _ = deferredMessage(home)
    answer = ask(h, {"op": "stats"}, stats=lambda: {"bad": object()})
    assert answer["ok"] is False and answer["errors"][0].startswith("internal error: ")


@pytest_twisted.ensureDeferred
async def test_ctl_stats_command_through_a_listening_control_service(home):
    """The ControlService's socket (mode, group) and qmtwist ctl stats's two formats."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    h, _ = deferredMessage(home)
    figures = {"qmtwist_queue_messages": 1, "qmtwist_smtp_sessions_total": 7}
    svc = ControlService(reactor, controlSocket(home),
                         ControlFactory(QueueAdmin(h.service), lambda: figures))
    svc.startService()
    try:
        st = os.stat(controlSocket(home))
        gid = queueGroup()
        assert (st.st_mode & 0o777, st.st_gid if gid is not None else None) == (
            (0o660, gid) if gid is not None else (0o600, None))

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path,
                                   "ctl", *args], capture_output=True, timeout=60)

        r = await deferToThread(run, "stats")
        assert (r.returncode, r.stdout, r.stderr) == (
            0, b"qmtwist_queue_messages 1\nqmtwist_smtp_sessions_total 7\n", b"")
        r = await deferToThread(run, "stats", "--json")
        assert (r.returncode, json.loads(r.stdout)) == (0, figures)
    finally:
        await svc.stopService()
    r = subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, "ctl",
                        "queue"], capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (
        111, f"qmtwist ctl: fatal: not running (no {controlSocket(home)})\n".encode())
