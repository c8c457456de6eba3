"""
Header lines qmail writes: the queue's Received line (docs/behaviour/queue.md 5.4), Delivered-To and
Return-Path
(docs/behaviour/local.md 4.9), and the date shapes DATE822 and CTIME (docs/behaviour/home.md 0).
"""

from __future__ import annotations

import time

from qmtwist.address import quoteLocal

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def date822(when: float) -> bytes:
    """C{5 Nov 2025 07:03:09 -0000}, in UTC."""
    t = time.gmtime(when)
    return b"%d %s %d %02d:%02d:%02d -0000" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def ctime(when: float) -> bytes:
    """C{Wed Nov 05 07:03:09 2025}, in UTC (the mbox From_ line)."""
    t = time.gmtime(when)
    return b"%s %s %02d %02d:%02d:%02d %d" % (
        _DAYS[t.tm_wday].encode(), _MONTHS[t.tm_mon - 1].encode(), t.tm_mday,
        t.tm_hour, t.tm_min, t.tm_sec, t.tm_year)


def queueReceived(qp: int, how: bytes, when: float) -> bytes:
    """C{Received: (qmail QP invoked HOW); DATE822}, the first line of every queued message."""
    return b"Received: (qmail %d invoked %s); %s\n" % (qp, how, date822(when))


def _noNewlines(text: bytes) -> bytes:
    return text.replace(b"\n", b"_")


def deliveredTo(address: bytes) -> bytes:
    """C{Delivered-To: LOCAL@HOST}, newlines inside replaced by C{_}."""
    return b"Delivered-To: " + _noNewlines(address) + b"\n"


def returnPath(sender: bytes) -> bytes:
    """C{Return-Path: <SENDER>}, local part quoted when needed; C{<>} for bounces."""
    return b"Return-Path: <" + _noNewlines(quoteLocal(sender) if sender else b"") + b">\n"
