"""
CPU cost of the daemon's log per message: the lines one SMTP-received, locally delivered message
produces (copied from a daemon log under bench/smtp_bench.py), logged through twisted.logger's
Logger and a LogPublisher into a real file, by the old observer chain (twistd's
textFileLogObserver under the noise FilteringLogObserver) and by the new one
(qmtwist.logbuffer.BufferedObserver, docs/behaviour/operations.md 21.4.1), in the same invocation.
Prints CPU microseconds per message for both and the ratio. docs/bench.md holds figures.

    python bench/log_bench.py [--messages 20000] [--format text|json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogPublisher,
    Logger,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile  # noqa: E402

from qmtwist.logbuffer import BufferedObserver, LineBuffer, classicText, jsonText  # noqa: E402
from qmtwist.logformat import _dropNoise, jsonLines  # noqa: E402


def oneMessage(smtp: Logger, send: Logger, n: int) -> None:
    """The lines of one message, with the calls qmtwist makes (tcpsession.py, queue/*)."""
    smtp.info("tcpserver: status: {active}/{limit}", active=1, limit=100)
    smtp.info("tcpserver: pid {n} from {ip}", n=n, ip="127.0.0.1")
    smtp.info("tcpserver: ok {n} {fields}", n=n,
              fields="bench.example:127.0.0.1:44233 :127.0.0.1::58540")
    send.info("new msg {id}", id=2154929)
    send.info("info msg {id}: bytes {bytes} from <{sender}> qp {qp} uid {uid}", id=2154929,
              bytes=1322, sender="bench@client.example", qp=12628043, uid=0)
    smtp.info("tcpserver: end {n} status {status}", n=n, status=256)
    smtp.info("tcpserver: status: {active}/{limit}", active=0, limit=100)
    send.info("starting delivery {n}: msg {id} to local {rcpt}", n=1031, id=2154929,
              rcpt="930benchu@bench.example")
    send.info("status: local {l}/{lmax} remote {r}/{rmax}", l=1, lmax=10, r=0, rmax=20)
    send.info("delivery {n}: msg {id}: {result}: {text}", n=1031, id=2154929, result="success",
              text="did_1+0+0/")
    send.info("status: local {l}/{lmax} remote {r}/{rmax}", l=0, lmax=10, r=0, rmax=20)
    send.info("end msg {id}", id=2154929)


LINES = 12  # lines per message


def run(observer: Any, messages: int) -> float:
    """CPU seconds of C{messages} messages' lines through C{observer}."""
    publisher = LogPublisher(observer)
    smtp = Logger(namespace="qmtwist.smtp", observer=publisher)
    send = Logger(namespace="qmail-send", observer=publisher)
    start = time.process_time()
    for n in range(messages):
        oneMessage(smtp, send, n)
    return time.process_time() - start


def oldObserver(logFile: LogFile, fmt: str) -> Any:
    inner = jsonLines(logFile) if fmt == "json" else textFileLogObserver(logFile)
    return FilteringLogObserver(inner, [_dropNoise])  # type: ignore[list-item]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--format", choices=("text", "json"), default="text")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = {}
        for i, which in enumerate(("old", "new", "old", "new")):  # the second figures count
            path = os.path.join(d, f"{which}{i}.log")
            logFile = LogFile.fromFullPath(path, rotateLength=None)
            clock = Clock()  # the timer never fires: the 64 KB limit writes
            if which == "old":
                observer = oldObserver(logFile, args.format)
            else:
                buffer = LineBuffer(logFile, clock)
                render = jsonText if args.format == "json" else classicText()
                observer = BufferedObserver(buffer, render)

            cpu = run(observer, args.messages)
            if which == "new":
                start = time.process_time()
                buffer.close()
                cpu += time.process_time() - start
            logFile.close()
            with open(path, "rb") as f:
                lines = sum(1 for _ in f)
            assert lines == LINES * args.messages, (which, lines)
            results[which] = cpu * 1e6 / args.messages
        run(lambda event: None, args.messages)
        floor = run(lambda event: None, args.messages) * 1e6 / args.messages
        old, new = results["old"], results["new"]
        print(f"log lines of one message ({LINES} lines, {args.format}), "
              f"{args.messages} messages, into a file:")
        print(f"  old (twistd observer + noise filter):     {old:7.1f} us CPU/msg")
        print(f"  new (BufferedObserver):                   {new:7.1f} us CPU/msg")
        print(f"  ratio old/new: {old / new:.1f}x")
        print(f"  (of which Logger.info and the publisher, with an observer that does nothing: "
              f"{floor:.1f} us)")


if __name__ == "__main__":
    main()
