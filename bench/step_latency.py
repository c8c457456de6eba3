"""
Where a session's time goes under load: one extra SMTP client, beside smtp-source, that sends
one message per connection the way smtp-source does (connect and greeting, EHLO, MAIL, RCPT,
DATA, the message with its final dot, QUIT) and times every step. Used by bench/smtp_bench.py
with --probe; docs/bench.md explains the figures.

The probe's messages are real ones, to the first bench user, so both servers carry the same
extra load; the bench counts them among the deliveries it waits for.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Any

STEPS = ("connect", "ehlo", "mail", "rcpt", "data", "dot", "quit")


class StepProbe:
    """
    A thread that runs sequential one-message sessions until L{stop}, recording how long each
    step waited for its reply.

    @ivar sent: messages the server answered 250 to after their final dot.
    """

    def __init__(self, port: int, sender: str, recipient: str, size: int) -> None:
        self.port = port
        self.sender = sender
        self.recipient = recipient
        body = b"Subject: probe\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(1, size // 78)
        self.body = body
        self.samples: dict[str, list[float]] = {s: [] for s in STEPS}
        self.sent = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="step-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except (OSError, ValueError) as e:
                self.errors.append(str(e))
                if len(self.errors) > 20:
                    return
                time.sleep(0.05)

    def _session(self) -> None:
        times: dict[str, float] = {}
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            f = s.makefile("rb")
            _reply(f, b"220")
            times["connect"] = time.perf_counter() - t
            for step, line, code in (
                    ("ehlo", b"EHLO probe.example\r\n", b"250"),
                    ("mail", b"MAIL FROM:<%s>\r\n" % self.sender.encode(), b"250"),
                    ("rcpt", b"RCPT TO:<%s>\r\n" % self.recipient.encode(), b"250"),
                    ("data", b"DATA\r\n", b"354"),
                    ("dot", self.body + b".\r\n", b"250"),
                    ("quit", b"QUIT\r\n", b"221")):
                t = time.perf_counter()
                s.sendall(line)
                _reply(f, code)
                times[step] = time.perf_counter() - t
                if step == "dot":
                    self.sent += 1
        for step, v in times.items():
            self.samples[step].append(v)

    def summary(self) -> dict[str, Any]:
        """Median and 90th percentile of every step, in milliseconds, and the session total."""
        out: dict[str, Any] = {"sessions": len(self.samples["quit"]), "errors": self.errors[:3]}
        total = [sum(parts) for parts in zip(*(self.samples[s] for s in STEPS))]
        for step, values in [*((s, self.samples[s]) for s in STEPS), ("total", total)]:
            if len(values) >= 2:
                q = statistics.quantiles(values, n=10)
                out[step] = [round(statistics.median(values) * 1000, 2), round(q[-1] * 1000, 2)]
        return out


def _reply(f: Any, code: bytes) -> None:
    """Read one (multi-line) reply; raise unless it starts with C{code}."""
    while True:
        line = f.readline()
        if not line:
            raise ValueError("connection closed")
        if not line.startswith(code):
            raise ValueError(f"unexpected reply {line[:80]!r}")
        if line[3:4] != b"-":
            return
