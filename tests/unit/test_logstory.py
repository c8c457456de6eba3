"""
qmtwist ctl why's log reading (qmtwist.logstory) and the daemon's log observer
(qmtwist.logformat): the noise filter and JSON lines (docs/behaviour/queue-control.md 17.9).
"""

from __future__ import annotations

import io
import json

import pytest
import pytest_twisted
from twisted.logger import LogPublisher, Logger, eventsFromJSONLogFile, formatEvent

from qmtwist.home import Home
from qmtwist.logformat import isNoise, jsonLines, logFileName, writeLogPointer
from qmtwist.logstory import StoryError, findLog, logPointer, matching, story

LOG = """\
2026-12-02T10:00:00+0000 [qmail-send#info] new msg 77
2026-12-02T10:00:01+0000 [qmail-send#info] starting delivery 1: msg 77 to remote a@b.c
2026-12-02T10:00:01+0000 [qmail-send#info] starting delivery 2: msg 770 to remote a@b.c
2026-12-02T10:00:02+0000 [qmail-send#info] delivery 1: msg 77: deferral: later/
2026-12-02T10:00:03+0000 [qmail-send#info] end msg 77
2026-12-02T11:00:00+0000 [qmail-send#info] new msg 77
2026-12-02T11:00:01+0000 [qmail-send#info] hold msg 77
"""


def test_matching_takes_the_last_story_of_a_number_and_no_longer_numbers():
    assert matching(io.StringIO(LOG), 77) == [
        "2026-12-02T11:00:00+0000 [qmail-send#info] new msg 77",
        "2026-12-02T11:00:01+0000 [qmail-send#info] hold msg 77"]
    assert [x.split("] ")[1] for x in matching(io.StringIO(LOG), 770)] == [
        "starting delivery 2: msg 770 to remote a@b.c"]
    assert matching(io.StringIO(LOG), 7) == []


def test_rotated_files_are_read_oldest_first(tmp_path):
    log = tmp_path / "twistd.log"
    (tmp_path / "twistd.log.2").write_text(LOG.splitlines(True)[0])
    (tmp_path / "twistd.log.1").write_text("".join(LOG.splitlines(True)[1:4]))
    log.write_text("2026-12-02T10:00:03+0000 [qmail-send#info] end msg 77\n")
    (tmp_path / "twistd.log.bak").write_text("new msg 77\n")
    home = Home(str(tmp_path / "home"))
    paths = findLog(home, str(log))
    assert paths == [str(tmp_path / "twistd.log.2"), str(tmp_path / "twistd.log.1"), str(log)]
    assert [x.split("] ")[1] for x in story(paths, 77)] == [
        "new msg 77", "starting delivery 1: msg 77 to remote a@b.c",
        "delivery 1: msg 77: deferral: later/", "end msg 77"]


def test_the_log_pointer_and_its_absence(tmp_path):
    home = Home(str(tmp_path))
    (tmp_path / "run").mkdir()
    with pytest.raises(StoryError, match="does not log to a file"):
        findLog(home, None)
    writeLogPointer(logPointer(home), str(tmp_path / "x.log"))
    assert findLog(home, None) == [str(tmp_path / "x.log")]
    writeLogPointer(logPointer(home), None)
    with pytest.raises(StoryError):
        findLog(home, None)
    assert findLog(home, "-") == []


def test_logFileName_follows_twistd():
    assert logFileName({"logfile": "/var/log/q.log"}) == "/var/log/q.log"
    assert logFileName({"logfile": "-", "nodaemon": True}) is None
    assert logFileName({"logfile": None, "nodaemon": True}) is None
    assert logFileName({"logfile": None, "nodaemon": False}).endswith("/twistd.log")
    assert logFileName({"logfile": "/x", "syslog": True}) is None


@pytest_twisted.ensureDeferred
async def test_noise_filter_drops_twisteds_port_and_factory_lines_only(logEvents, tmp_path):
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    f = Factory.forProtocol(Protocol)
    tcp = reactor.listenTCP(0, f, interface="127.0.0.1")
    port = tcp.getHost().port
    sock = str(tmp_path / "s.sock")
    unix = reactor.listenUNIX(sock, f)
    await tcp.stopListening()
    await unix.stopListening()
    texts = [formatEvent(e) for e in logEvents]
    assert texts == [
        f"Factory starting on {port}", f"Starting factory {f!r}",
        f"Factory starting on {sock!r}", f"(TCP Port {port} Closed)",
        f"(UNIX Port {sock} Closed)", f"Stopping factory {f!r}"]
    assert all(isNoise(e) for e in logEvents), texts
    del logEvents[:]
    Logger(namespace="qmail-send").info("new msg {id}", id=5)
    Logger(namespace="qmtwist").info("smtp: listening on 127.0.0.1:2525")
    Logger(namespace="twisted.internet.base").info("Main loop terminated.")
    assert len(logEvents) == 3 and not any(isNoise(e) for e in logEvents)


def test_json_lines_carry_qmails_text_and_read_back():
    out = io.StringIO()
    observer = jsonLines(out)
    pub = LogPublisher()
    pub.addObserver(observer)
    Logger(namespace="qmail-send", observer=pub).info(
        "delivery {delivery}: msg {id}: {outcome}: {text}", delivery=3, id=77,
        outcome="deferral", text="later/")
    [line] = out.getvalue().splitlines()
    obj = json.loads(line)
    assert obj["text"] == "delivery 3: msg 77: deferral: later/"
    assert obj["log_namespace"] == "qmail-send" and obj["id"] == 77
    [event] = list(eventsFromJSONLogFile(io.StringIO(out.getvalue()), recordSeparator=""))
    assert event["delivery"] == 3
    [told] = matching(io.StringIO(out.getvalue()), 77)
    assert told.endswith(" [qmail-send] delivery 3: msg 77: deferral: later/")


def test_daemonObserver_wraps_twistds_own_observers():
    from twisted.logger import ILogObserver

    from qmtwist.logformat import daemonObserver

    syslog = {"syslog": True, "prefix": "qmtwist", "logfile": None, "nodaemon": True}
    stdout = {"syslog": False, "prefix": "qmtwist", "logfile": None, "nodaemon": True}
    for config in (syslog, stdout):
        for noise in (False, True):
            assert ILogObserver.providedBy(daemonObserver(config, "text", noise))


def test_story_from_standard_input():
    assert [x.split("] ")[1] for x in story([], 77, io.StringIO(LOG))] == [
        "new msg 77", "hold msg 77"]
