"""
The log lines an SMTP session writes about itself (docs/behaviour/submission.md 16.5): one per
refused command, one per TLS handshake, one per AUTH attempt. The SMTP server and the submission
session call these; the formatting is here, so that each line looks the same wherever it comes
from and nothing secret reaches the log (an AUTH command's argument, a SASL response, is never
written).

Lines (namespace C{qmtwist.smtp} or C{qmtwist.submission}):

  - C{smtp: refused IP CODE COMMAND}: a 4xx or 5xx reply; C{CODE} is the reply code, with the
    enhanced status code after it when the reply has one; C{COMMAND} the command line (non-ASCII
    and control bytes as C{?}, cut at 200 bytes; only the mechanism of an C{AUTH});
  - C{smtp: tls IP PROTOCOL CIPHER} and C{ peer SUBJECT} when the client presented a
    certificate that was verified (written by L{qmtwist.tlslog.logTLS}, shared with POP3);
  - C{submission: auth ok NAME from IP (MECH)}, C{submission: auth failed NAME from IP (MECH):
    REASON}.
"""

from __future__ import annotations

import re
from typing import Mapping

from twisted.logger import Logger

from qmtwist.tlslog import logTLS, printable, tlsDescription

__all__ = ["commandForLog", "logAuth", "logRefusal", "logTLS", "printable", "replyCode",
           "tlsDescription"]

_ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3}$")


def commandForLog(line: bytes | None) -> str:
    """The command as logged: an C{AUTH} keeps its mechanism only (its argument is a
    credential), anything else is L{printable}."""
    if not line:
        return "(none)"
    verb, _, rest = line.partition(b" ")
    if verb.upper() == b"AUTH":
        return printable(b"AUTH " + rest.split(b" ", 1)[0]).rstrip()
    return printable(line)


def replyCode(reply: bytes) -> str:
    """C{553} or C{553 5.7.1}: the reply code and its enhanced status code if it carries one."""
    code = reply[:3].decode("ascii", "replace")
    parts = reply[4:].split(b" ", 1)
    if parts and _ENHANCED.match(parts[0]):
        return code + " " + parts[0].decode("ascii")
    return code


def logRefusal(log: Logger, name: str, env: Mapping[str, bytes], command: bytes | None,
               reply: bytes) -> None:
    """C{NAME: refused IP CODE COMMAND} for a 4xx/5xx C{reply} to C{command}."""
    log.info("{name}: refused {ip} {code} {command}", name=name,
             ip=printable(env.get("TCPREMOTEIP", b"unknown")), code=replyCode(reply),
             command=commandForLog(command))


def logAuth(log: Logger, env: Mapping[str, bytes], mechanism: bytes, user: bytes | None,
            ok: bool, reason: str = "") -> None:
    """C{submission: auth ok NAME from IP (MECH)} or C{... auth failed NAME ...: REASON}."""
    log.info("submission: auth {result} {user} from {ip} ({mechanism}){reason}",
             result="ok" if ok else "failed",
             user=printable(user, 64) if user is not None else "(none)",
             ip=printable(env.get("TCPREMOTEIP", b"unknown")),
             mechanism=printable(mechanism, 20), reason=f": {reason}" if reason else "")
