"""
qmail-send's quoting of report text in its log lines (docs/behaviour/queue.md 6.2): LF becomes
C{/}; a byte outside 33-126, and C{%}, becomes C{_}; every other byte stays. Checked for every
byte value against the rule written out, and on a real report.
"""

from __future__ import annotations

from qmtwist.queue.state import logSafe


def _rule(b: int) -> str:
    if b == 10:
        return "/"
    if b < 33 or b > 126 or b == 37:
        return "_"
    return chr(b)


def test_every_byte() -> None:
    every = bytes(range(256))
    assert logSafe(every) == "".join(_rule(b) for b in every)


def test_a_report() -> None:
    text = b"127.0.0.1 accepted message.\nRemote host said: 250 ok 100% caf\xc3\xa9\n"
    assert logSafe(text) == \
        "127.0.0.1_accepted_message./Remote_host_said:_250_ok_100__caf__/"
    assert logSafe(b"") == ""
