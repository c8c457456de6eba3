"""
The first thread job of a local delivery (L{qmtwist.local.deliver._prepareAndLead}): the
.qmail checks and the file lines before any program line run in one hop, with the same results
and failure lines as one hop per line (docs/behaviour/local.md 4.8).
"""

from __future__ import annotations

import os

from twisted.internet.defer import ensureDeferred, maybeDeferred

from qmtwist.delivery import Outcome
from qmtwist.local.deliver import Job, JobResult, runJob

MESSAGE = b"Subject: hi\n\nbody\n"


def _setUp(tmp_path, dotqmail: bytes) -> Job:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    for sub in ("tmp", "new", "cur"):
        (home / "Maildir" / sub).mkdir(parents=True)
    (home / ".qmail").write_bytes(dotqmail)
    mess = tmp_path / "mess"
    mess.write_bytes(MESSAGE)
    return Job(user=b"joe", home=str(home), dash=b"", ext=b"", local=b"joe",
               host=b"example.com", sender=b"a@example.org", messPath=str(mess),
               key="1.P2Q0", mayBeRepeat=False, defaultDelivery=b"./Maildir/\n",
               binDir="/nonexistent", now=0.0)


def _run(job: Job) -> tuple[JobResult, int]:
    hops: list = []

    def runner(f):
        hops.append(f)
        return maybeDeferred(f)

    got: list = []
    ensureDeferred(runJob(job, None, runner, {})).addBoth(got.append)
    [result] = got
    assert isinstance(result, JobResult), result
    return result, len(hops) - 2  # less the message's open and close


def test_fileLinesBeforeAProgramRunInOneHop(tmp_path):
    job = _setUp(tmp_path, b"./Maildir/\n./mbox\n&fwd@example.net\n")
    result, hops = _run(job)
    assert (result.outcome, result.files, result.forwards) == (
        Outcome.SUCCESS, 2, (b"fwd@example.net",))
    assert hops == 1
    [name] = os.listdir(os.path.join(job.home, "Maildir", "new"))
    with open(os.path.join(job.home, "Maildir", "new", name), "rb") as f:
        assert f.read().endswith(MESSAGE)
    with open(os.path.join(job.home, "mbox"), "rb") as f:
        assert f.read().startswith(b"From a@example.org ")


def test_aFailingFileLineIsReportedWithItsLine(tmp_path):
    job = _setUp(tmp_path, b"./Maildir/\n./Missing/\n")
    result, hops = _run(job)
    assert (result.outcome, result.files, result.failedLine, result.failedFile) == (
        Outcome.DEFERRAL, 1, 2, os.path.join(job.home, ".qmail"))
    assert result.text == b"Unable to chdir to maildir. (#4.2.1)\n"
    assert hops == 1
