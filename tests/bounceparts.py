"""Test helper: the parts of a bounce (an RFC 3464 report, docs/behaviour/queue.md 5.7.1)."""

from __future__ import annotations

import email
import email.policy
from email.message import Message


def report(raw: bytes) -> Message:
    """The bounce parsed by Python's email package; checks it is a delivery-status report."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    return msg


def qsbmf(raw: bytes) -> bytes:
    """The first part, qmail's bounce text (QSBMF), as bytes."""
    first = report(raw).get_payload()[0]
    assert first.get_content_type() == "text/plain"
    data = first.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data
