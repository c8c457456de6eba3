"""The session's own log lines (qmtwist/smtp/sessionlog.py, docs/behaviour/submission.md 16.5)."""

from __future__ import annotations

from twisted.logger import formatEvent

from qmtwist.smtp.sessionlog import commandForLog, replyCode
from tests.unit.smtp.helpers import makeSession


def test_reply_code_and_command_text():
    assert replyCode(b"553 sorry, that domain isn't in my list (#5.7.1)") == "553"
    assert replyCode(b"535 5.7.8 authentication failed (#5.7.8)") == "535 5.7.8"
    assert commandForLog(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==") == "AUTH PLAIN"
    assert commandForLog(b"auth login YWxpY2U=") == "AUTH login"
    assert commandForLog(b"MAIL FROM:<t\xc3\xa9st@x>\x01") == "MAIL FROM:<t??st@x>?"
    assert commandForLog(b"X" * 300).endswith("X...") and len(commandForLog(b"X" * 300)) == 203
    assert commandForLog(None) == "(none)"


def test_each_refused_command_is_logged_on_the_smtp_listener(logEvents):
    proto, t, _, clock = makeSession()
    proto.dataReceived(b"HELO c\r\nRCPT TO:<a@test.example>\r\nMAIL FROM:<a@b>\r\n"
                       b"RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<bob@test.example>\r\n"
                       b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    lines = [formatEvent(e) for e in logEvents if "refused" in e.get("log_format", "")]
    assert lines == [
        "smtp: refused 127.0.0.1 503 RCPT TO:<a@test.example>",
        "smtp: refused 127.0.0.1 553 RCPT TO:<x@elsewhere.example>",
        "smtp: refused 127.0.0.1 502 AUTH PLAIN",
    ]
    clock.advance(proto.control.timeoutsmtpd + 1)
    assert [formatEvent(e) for e in logEvents if "refused" in e.get("log_format", "")][-1] == (
        "smtp: refused 127.0.0.1 451 (timeout)")
