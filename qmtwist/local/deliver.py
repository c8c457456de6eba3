"""
Running one local delivery (qmail-local, docs/behaviour/local.md 4.2-4.10), with the user's privileges
already in
place: in the daemon's process when it is not root, or in the per-user helper child
(L{qmtwist.local.child}) when it is.

L{runJob} checks the home, finds and reads the C{.qmail} file, checks for a loop, then runs the
instructions top to bottom: mbox and Maildir writes on C{runInThread}, programs through
C{reactor.spawnProcess}. Forward addresses are only collected: the agent queues them as one
message after every other line succeeded (L{JobResult.forwards}), through the daemon's injector.
"""

from __future__ import annotations

import base64
import itertools
import os
from typing import Any, Callable

from attrs import asdict, field, frozen

from qmtwist.delivery import Outcome
from qmtwist.errors import MailError, PermanentFailure
from qmtwist.local import dotqmail, maildir, mbox, program
from qmtwist.local.dotqmail import Kind
from qmtwist.local.env import dtline, newSender, programEnv, rpline, ufline
from qmtwist.local.message import QueuedMessage
from qmtwist.local.message import headerHasLine as _headerHasLine

LOOPING = "This message is looping: it already has my Delivered-To line. (#5.4.6)"


@frozen
class Job:
    """
    Everything the delivery of one recipient needs; crosses the pipe to a helper child as JSON.

    @ivar messPath: a regular file holding the message as queued, readable by the user.
    @ivar key: the stable delivery key (L{qmtwist.delivery.DeliveryRequest.uniqueKey}).
    @ivar syncLater: leave the sync of each Maildir's directory to the caller, which batches
        them (L{JobResult.unsynced}, docs/behaviour/local.md 4.8.1).
    """

    user: bytes
    home: str
    dash: bytes
    ext: bytes
    local: bytes
    host: bytes
    sender: bytes
    messPath: str
    key: str
    mayBeRepeat: bool
    defaultDelivery: bytes
    binDir: str
    now: float
    timeout: float = 86400.0  # control/timeoutlocal: longest a program delivery may run
    syncLater: bool = False

    def toJSON(self) -> dict[str, Any]:
        return {k: (base64.b64encode(v).decode() if isinstance(v, bytes) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def fromJSON(cls, d: dict[str, Any]) -> Job:
        kw = {}
        for k, v in d.items():
            if k in _BYTES_FIELDS:
                v = base64.b64decode(v)
            kw[k] = v
        return cls(**kw)


_BYTES_FIELDS = {"user", "dash", "ext", "local", "host", "sender", "defaultDelivery"}


@frozen
class JobResult:
    """
    What qmail-local decided; the agent adds forwarding and the C{did} line.

    @ivar text: program output and, on failure, the reason text (LF-terminated).
    @ivar files: mbox and Maildir lines done; C{programs}: programs run.
    @ivar forwards: addresses to forward to (only on success).
    @ivar unsynced: with L{Job.syncLater}, on success: the Maildir directories whose new
        names are not durable yet; the delivery is done only once they are synced.
    """

    outcome: Outcome
    text: bytes
    files: int = 0
    programs: int = 0
    forwards: tuple[bytes, ...] = ()
    newsender: bytes = b""
    dtline: bytes = b""
    failedLine: int = field(default=0)
    failedFile: str = ""
    unsynced: tuple[bytes, ...] = ()

    def toJSON(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value, "text": _b64(self.text), "files": self.files,
            "programs": self.programs, "forwards": [_b64(f) for f in self.forwards],
            "newsender": _b64(self.newsender), "dtline": _b64(self.dtline),
            "failedLine": self.failedLine, "failedFile": self.failedFile,
            "unsynced": [_b64(p) for p in self.unsynced]}

    @classmethod
    def fromJSON(cls, d: dict[str, Any]) -> JobResult:
        return cls(Outcome(d["outcome"]), base64.b64decode(d["text"]), int(d["files"]),
                   int(d["programs"]), tuple(base64.b64decode(f) for f in d["forwards"]),
                   base64.b64decode(d["newsender"]), base64.b64decode(d["dtline"]),
                   int(d.get("failedLine", 0)), str(d.get("failedFile", "")),
                   tuple(base64.b64decode(p) for p in d.get("unsynced", ())))


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _nl(text: str | bytes) -> bytes:
    b = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return b if b.endswith(b"\n") else b + b"\n"


@frozen
class _Plan:
    dq: dotqmail.DotQmail
    newsender: bytes


def headerHasLine(message: bytes, line: bytes) -> bool:
    """Whether a header line (up to the first empty line) equals C{line} (docs/behaviour/local.md 4.9)."""
    return _headerHasLine([message], line)


def _prepare(job: Job, dt: bytes, message: QueuedMessage) -> _Plan:
    dotqmail.checkHome(job.home)
    dq = dotqmail.locate(job.home, job.dash, job.ext, job.defaultDelivery)
    if message.headerHasLine(dt):
        raise PermanentFailure(LOOPING)
    owner, ownerDefault = dotqmail.ownerFiles(job.home, job.dash, job.ext)
    ns = newSender(job.sender, job.local, job.host, owner, ownerDefault)
    return _Plan(dq, ns)


def _resolve(home: str, path: bytes) -> bytes:
    return os.path.join(os.fsencode(home), path)


async def runJob(
    job: Job,
    reactor: Any,
    runInThread: Callable[[Callable[[], Any]], Any],
    baseEnv: dict[bytes, bytes],
    running: set[Any] | None = None,
    message: QueuedMessage | None = None,
) -> JobResult:
    """
    Deliver one recipient as qmail-local does; never raises.

    @param baseEnv: the environment programs start from (the daemon's).
    @param running: program transports in flight are kept here (so they can be stopped).
    @param message: the message as queued, already open (the helper child gets it as a
        descriptor because it cannot open the queue); otherwise C{job.messPath} is opened.
        Either way it is read in chunks and never held whole; the caller closes what it gave.
    """
    owned = message is None
    try:
        if message is None:
            message = await runInThread(lambda: QueuedMessage.open(job.messPath))
    except MailError as e:
        return JobResult(Outcome.DEFERRAL, _nl(e.text), dtline=dtline(job.local, job.host))
    assert message is not None
    try:
        return await _runJob(job, reactor, runInThread, baseEnv, running, message)
    finally:
        if owned:
            await runInThread(message.close)


async def _runJob(job: Job, reactor: Any, runInThread: Callable[[Callable[[], Any]], Any],
                  baseEnv: dict[bytes, bytes], running: set[Any] | None,
                  message: QueuedMessage) -> JobResult:
    dt = dtline(job.local, job.host)
    try:
        plan: _Plan = await runInThread(lambda: _prepare(job, dt, message))
    except MailError as e:
        outcome = Outcome.FAILURE if e.permanent else Outcome.DEFERRAL
        return JobResult(outcome, _nl(e.text), dtline=dt)
    rp = rpline(job.sender)
    uf = ufline(job.sender, job.now)
    output = b""
    files = programs = 0
    forwards: list[bytes] = []
    unsynced: list[bytes] = []
    env: dict[bytes, bytes] | None = None
    source = plan.dq.path or "control/defaultdelivery"
    for ins in plan.dq.instructions:
        if ins.kind is Kind.FORWARD:
            forwards.append(ins.value)
            continue
        try:
            if ins.kind is Kind.MBOX:
                path = _resolve(job.home, ins.value)
                await runInThread(lambda p=path: mbox.deliver(p, (uf, rp, dt), message.chunks()))
                files += 1
                continue
            if ins.kind is Kind.MAILDIR:
                path = _resolve(job.home, ins.value)
                ln = ins.lineno if plan.dq.path is not None else 1000 + ins.lineno
                name = await runInThread(lambda p=path, n=ln: maildir.deliver(
                    p, itertools.chain((rp, dt), message.chunks()), job.key, n, job.mayBeRepeat,
                    syncNew=not job.syncLater))
                if job.syncLater:
                    unsynced.append(os.path.abspath(os.path.join(path, os.path.dirname(name))))
                files += 1
                continue
        except MailError as e:
            outcome = Outcome.FAILURE if e.permanent else Outcome.DEFERRAL
            return JobResult(outcome, output + _nl(e.text), files, programs, (),
                             plan.newsender, dt, ins.lineno, source)
        # program
        if env is None:
            env = programEnv(
                baseEnv, sender=job.sender, newsender=plan.newsender, local=job.local,
                host=job.host, user=job.user, home=job.home, ext=job.ext,
                default=plan.dq.default, dt=dt, rp=rp, uf=uf, binDir=job.binDir)
        r = await program.run(reactor, ins.value, message.fd, env, job.home, runInThread, running,
                              timeout=job.timeout)
        programs += 1
        output += r.output
        if r.outcome is not Outcome.SUCCESS:
            return JobResult(r.outcome, _nl(output), files, programs, (), plan.newsender, dt,
                             ins.lineno, source)
        if r.stop:
            break
    return JobResult(Outcome.SUCCESS, output, files, programs, tuple(forwards),
                     plan.newsender, dt, unsynced=tuple(unsynced))
