"""
The control socket C{HOME/run/qmtwist-ctl.sock} (docs/behaviour/queue-control.md 17.2): how
C{qmtwist ctl queue/hold/release/delete/retry/stats} and C{mailq} reach the running daemon.

Protocol: the client sends one line holding a JSON object, C{{"op": OP}} plus C{"ids": [N, ...]}
for the changes; the server answers one line holding a JSON object and closes:

 - C{queue}: C{{"ok": true, "messages": [...]}} (the objects of L{QueueAdmin.listing});
 - C{hold}, C{release}, C{delete}, C{retry}: C{{"ok": BOOL, "done": [N, ...], "errors": [LINE,
   ...]}}, C{ok} false when any number was refused (unknown, held, a delivery running);
 - C{stats}: C{{"ok": true, "stats": {NAME: VALUE, ...}}} from the C{stats} callable given to
   L{ControlFactory}, or C{{"ok": false, "errors": ["no metrics"]}} without one;
 - anything else: C{{"ok": false, "errors": [LINE]}}.

Who may do what: anyone who can connect may ask for C{queue} and C{stats} (the socket's mode and
group decide who can connect: 0660 and group C{qmtwistq} when that group exists, else 0600); the
changes are refused unless the peer (C{SO_PEERCRED}) is root or the daemon's own uid.
"""

from __future__ import annotations

import grp
import json
import os
from typing import Any, Callable

from twisted.application import service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from qmtwist.queue.admin import QueueAdmin
from qmtwist.queue.socketserver import peerUid, prepareSocketPath

log = Logger(namespace="qmtwist-ctl")
CHANGES = ("hold", "release", "delete", "retry")
#: the group whose members may list the queue through the socket (docs: queue-control.md 17.2)
QUEUE_GROUP = "qmtwistq"
MAX_IDS = 100_000

Stats = Callable[[], dict]


def _answer(ok: bool, **fields: Any) -> dict[str, Any]:
    return {"ok": ok, **fields}


class ControlProtocol(LineOnlyReceiver):
    """One request line, one answer line, then the connection closes."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, admin: QueueAdmin, stats: Stats | None, mayChange: Callable[[int], bool]
                 ) -> None:
        self.admin = admin
        self.stats = stats
        self.mayChange = mayChange
        self._asked = False

    def lineReceived(self, line: bytes) -> None:
        if self._asked:
            return
        self._asked = True
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        try:
            result = self._handle(request)
        except Exception:
            result = fail()
        d = result if isinstance(result, Deferred) else succeed(result)
        d.addErrback(self._crashed).addCallback(self._send)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._asked = True
        self._send(_answer(False, errors=["request too long"]))

    def _crashed(self, f: Any) -> dict[str, Any]:
        log.failure("control request failed", f)
        return _answer(False, errors=[f"internal error: {f.getErrorMessage()}"])

    def _handle(self, request: Any) -> dict[str, Any] | Deferred[dict[str, Any]]:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _answer(False, errors=["bad request: want a JSON object with \"op\""])
        op = request["op"]
        if op == "queue":
            return self.admin.listing().addCallback(lambda rows: _answer(True, messages=rows))
        if op == "stats":
            if self.stats is None:
                return _answer(False, errors=["no metrics"])
            return _answer(True, stats=self.stats())
        if op not in CHANGES:
            return _answer(False, errors=[f"unknown request {op[:40]!r}"])
        ids = request.get("ids")
        if (not isinstance(ids, list) or not ids or len(ids) > MAX_IDS
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                           for n in ids)):
            return _answer(False, errors=[f"{op}: want message numbers"])
        uid = peerUid(self.transport)
        if uid is None or not self.mayChange(uid):
            return _answer(False, errors=[f"{op}: permission denied (root or the daemon's "
                                          "user only)"])
        log.info("ctl: {op} {ids} by uid {uid}", op=op, ids=" ".join(map(str, ids)), uid=uid)
        return getattr(self.admin, op)(ids).addCallback(lambda o: o.asDict())

    def _send(self, answer: dict[str, Any]) -> None:
        if self.transport is None:
            return
        try:
            line = json.dumps(answer)
        except (TypeError, ValueError) as e:  # e.g. a figure that is not a number
            line = json.dumps(_answer(False, errors=[f"internal error: {e}"]))
        self.transport.write(line.encode() + b"\n")
        self.transport.loseConnection()


def daemonOrRoot(uid: int) -> bool:
    """The default rule for changes: the peer is root or runs as the daemon's uid."""
    return uid == 0 or uid == os.getuid()


class ControlFactory(protocol.Factory):
    """
    Serves the control socket for one queue service.

    @param stats: returns the daemon's figures by name (the metrics object's C{stats}); L{None}
        when the daemon has no metrics, and C{stats} answers "no metrics".
    """

    noisy = False

    def __init__(self, admin: QueueAdmin, stats: Stats | None = None,
                 mayChange: Callable[[int], bool] = daemonOrRoot) -> None:
        self.admin = admin
        self.stats = stats
        self.mayChange = mayChange

    def buildProtocol(self, addr: IAddress | None) -> ControlProtocol:
        p = ControlProtocol(self.admin, self.stats, self.mayChange)
        p.factory = self
        return p


def queueGroup() -> int | None:
    """The gid of group C{qmtwistq}, or L{None} when there is no such group."""
    try:
        return grp.getgrnam(QUEUE_GROUP).gr_gid
    except KeyError:
        return None


class ControlService(service.Service):
    """
    Listens on the control socket: mode 0660 and group C{qmtwistq} when the group exists
    (its members may list the queue), else 0600.
    """

    def __init__(self, reactor: Any, path: str, factory: ControlFactory) -> None:
        self.reactor = reactor
        self.path = path
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        prepareSocketPath(self.path)
        gid = queueGroup()
        self.port = self.reactor.listenUNIX(self.path, self.factory,
                                            mode=0o660 if gid is not None else 0o600)
        if gid is not None:
            try:
                os.chown(self.path, -1, gid)
            except OSError as e:
                os.chmod(self.path, 0o600)
                log.warn("warning: unable to give {path} to group {group}: {why}",
                         path=self.path, group=QUEUE_GROUP, why=e.strerror)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()  # type: ignore[no-any-return]
