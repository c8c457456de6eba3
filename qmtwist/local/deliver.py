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
    @ivar lateDataOn: with C{syncLater}, the devices of the filesystems the caller syncs whole:
        a Maildir file on one of them is not fsynced; the caller's C{syncfs(2)} makes its data
        durable with its name (docs/behaviour/local.md 4.8.1).
    @ivar rewrite: an earlier attempt's sync failed: an earlier copy in C{new/} is written again.
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
    lateDataOn: tuple[int, ...] = ()
    rewrite: bool = False

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
        if "lateDataOn" in kw:
            kw["lateDataOn"] = tuple(int(dev) for dev in kw["lateDataOn"])
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


def _fileLine(job: Job, plan: _Plan, ins: dotqmail.Instruction, message: QueuedMessage,
              lines: tuple[bytes, bytes, bytes]) -> bytes | None:
    """Blocking: one mbox or Maildir line; the new Maildir file's directory if left unsynced."""
    uf, rp, dt = lines
    path = _resolve(job.home, ins.value)
    if ins.kind is Kind.MBOX:
        mbox.deliver(path, (uf, rp, dt), message.chunks())
        return None
    ln = ins.lineno if plan.dq.path is not None else 1000 + ins.lineno
    name = maildir.deliver(path, lambda: itertools.chain((rp, dt), message.chunks()), job.key,
                           ln, job.mayBeRepeat, syncNew=not job.syncLater,
                           lateDataOn=frozenset(job.lateDataOn), distrustEarlier=job.rewrite)
    if job.syncLater:
        return os.path.abspath(os.path.join(path, os.path.dirname(name)))
    return None


_Lead = tuple[_Plan, int, list[bytes | None], MailError | None]


def _prepareAndLead(job: Job, dt: bytes, message: QueuedMessage,
                    lines: tuple[bytes, bytes, bytes]) -> _Lead:
    """
    Blocking, one thread job: L{_prepare}, then the file lines before the first program line
    (most deliveries are one Maildir line), in order, as the loop of L{_runJob} would run
    them one hop each.

    @return: the plan, the index of the first line not run, what each run file line gave
        (L{None} for a forward), and the error of the line at that index if it failed.
    """
    plan = _prepare(job, dt, message)
    done: list[bytes | None] = []
    instructions = plan.dq.instructions
    for i, ins in enumerate(instructions):
        if ins.kind is Kind.PROGRAM:
            return plan, i, done, None
        if ins.kind is Kind.FORWARD:
            done.append(None)
            continue
        try:
            done.append(_fileLine(job, plan, ins, message, lines))
        except MailError as e:
            return plan, i, done, e
    return plan, len(instructions), done, None


async def _runJob(job: Job, reactor: Any, runInThread: Callable[[Callable[[], Any]], Any],
                  baseEnv: dict[bytes, bytes], running: set[Any] | None,
                  message: QueuedMessage) -> JobResult:
    dt = dtline(job.local, job.host)
    rp = rpline(job.sender)
    uf = ufline(job.sender, job.now)
    lines = (uf, rp, dt)
    try:
        lead: _Lead = await runInThread(lambda: _prepareAndLead(job, dt, message, lines))
    except MailError as e:
        outcome = Outcome.FAILURE if e.permanent else Outcome.DEFERRAL
        return JobResult(outcome, _nl(e.text), dtline=dt)
    plan, stop, done, error = lead
    output = b""
    files = programs = 0
    forwards: list[bytes] = []
    unsynced: list[bytes] = []
    env: dict[bytes, bytes] | None = None
    source = plan.dq.path or "control/defaultdelivery"
    instructions = plan.dq.instructions
    for ins, got in zip(instructions, done):
        if ins.kind is Kind.FORWARD:
            forwards.append(ins.value)
            continue
        files += 1
        if got is not None:
            unsynced.append(got)
    if error is not None:
        outcome = Outcome.FAILURE if error.permanent else Outcome.DEFERRAL
        return JobResult(outcome, _nl(error.text), files, programs, (), plan.newsender, dt,
                         instructions[stop].lineno, source)
    for ins in instructions[stop:]:
        if ins.kind is Kind.FORWARD:
            forwards.append(ins.value)
            continue
        if ins.kind is not Kind.PROGRAM:
            try:
                got = await runInThread(lambda i=ins: _fileLine(job, plan, i, message, lines))
            except MailError as e:
                outcome = Outcome.FAILURE if e.permanent else Outcome.DEFERRAL
                return JobResult(outcome, output + _nl(e.text), files, programs, (),
                                 plan.newsender, dt, ins.lineno, source)
            if got is not None:
                unsynced.append(got)
            files += 1
            continue
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
