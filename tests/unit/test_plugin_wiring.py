"""
buildServices is the one wiring point: the injector's commits reach the queue service (or, with
--no-queue, lock/trigger) through its observer, and SIGHUP hooks are registered there.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred

from qmtwist import plugin
from qmtwist.queue.service import QueueService
from tests.conftest import logLines

NO_LISTENERS = {"smtp": "none", "qmtp": "none", "pop3": "none"}


def commit(built) -> int:
    injector = built.context.injector
    injector.runInThread = maybeDeferred  # the commit round in this thread
    d = injector.inject(b"a@x.example", [b"b@y.example"], b"Subject: s\n\nbody\n", b"by uid 0")
    return d.result.id


def closeMutex(built) -> None:
    if built.queue is not None and built.queue._mutexFd >= 0:
        os.close(built.queue._mutexFd)


def test_commits_reach_the_queue_service(home, monkeypatch):
    seen: list[tuple[QueueService, list[int]]] = []
    monkeypatch.setattr(QueueService, "preprocess", lambda self, ids: seen.append((self, ids)))
    pokes: list[object] = []
    monkeypatch.setattr(plugin, "pokeTrigger", pokes.append)
    built = plugin.buildServices(dict(NO_LISTENERS, home=home.path), reactor)
    try:
        n = commit(built)
        assert seen == [(built.queue, [n])] and pokes == []
    finally:
        closeMutex(built)


def test_without_a_queue_service_commits_poke_the_trigger(home, monkeypatch):
    pokes: list[object] = []
    monkeypatch.setattr(plugin, "pokeTrigger", pokes.append)
    built = plugin.buildServices(dict(NO_LISTENERS, home=home.path, **{"no-queue": True}),
                                 reactor)
    assert built.queue is None
    commit(built)
    assert pokes == [home.queue]


def test_smtp_sighup_hook_is_wired_by_the_plugin(home, logEvents):
    os.unlink(os.path.join(home.control, "rcpthosts"))
    built = plugin.buildServices(
        dict(NO_LISTENERS, home=home.path, smtp="tcp:0:interface=127.0.0.1", **{"no-queue": True}),
        reactor)
    warning = "warning: control/rcpthosts missing; accepting only local and virtual domains"
    assert logLines(logEvents).count(warning) == 1  # when the listener is built
    for reload in built.context.reloaders:
        reload()
    assert logLines(logEvents).count(warning) == 2  # and again on SIGHUP
    smtp = built.top.getServiceNamed("smtp")
    assert smtp.reload in built.context.reloaders  # its rules reread on SIGHUP, wired here
