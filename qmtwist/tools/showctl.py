"""
qmail-showctl: explain the control files (docs/behaviour/tools.md 13). Replaces qmail's qmail-showctl.

Same layout as qmail 1.03: a few lines about the installation, then for each control file a
blank line and C{name: explanation} (C{(Default.) } when the file is missing; list files one
line per entry), then C{name: I have no idea what this file does.} for unknown files.
qmtwist's own files (C{defaultdelivery}, C{qmtproutes}, C{queueextra}, C{tlsverify},
C{servercert.pem}) are explained too.
"""

from __future__ import annotations

import os

from qmtwist.tools.base import ProgramEnv

INT, STR, LST = "int", "str", "lst"

# name -> (kind, default, prefix, suffix, default-from-me) in qmail-showctl's order
_FILES: list[tuple[str, str, str, str, str, bool]] = [
    ("badmailfrom", LST, "Any MAIL FROM is allowed.", "", " not accepted in MAIL FROM.", False),
    ("bouncefrom", STR, "MAILER-DAEMON", "Bounce user name is ", "", False),
    ("bouncehost", STR, "bouncehost", "Bounce host name is ", "", True),
    ("concurrencydestination", INT, "0", "Remote concurrency per domain (0: half) is ", "",
     False),
    ("concurrencylocal", INT, "10", "Local concurrency is ", "", False),
    ("concurrencyrecipient", INT, "0", "Local concurrency per recipient (0: half) is ", "", False),
    ("concurrencyremote", INT, "20", "Remote concurrency is ", "", False),
    ("databytes", INT, "0", "SMTP DATA limit is ", " bytes", False),
    ("defaultdelivery", STR, "./Maildir/", "Default delivery is ", "", False),
    ("defaultdomain", STR, "defaultdomain", "Default domain name is ", "", True),
    ("defaulthost", STR, "defaulthost", "Default host name is ", "", True),
    ("doublebouncehost", STR, "doublebouncehost", "2B recipient host: ", "", True),
    ("doublebounceto", STR, "postmaster", "2B recipient user: ", "", False),
    ("envnoathost", STR, "envnoathost", "Presumed domain name is ", "", True),
    ("helohost", STR, "helohost", "SMTP client HELO host name is ", "", True),
    ("idhost", STR, "idhost", "Message-ID host name is ", "", True),
    ("localiphost", STR, "localiphost", "Local IP address becomes ", "", True),
    ("locals", LST, "Messages for me are delivered locally.", "Messages for ",
     " are delivered locally.", False),
    ("me", STR, "undefined! Uh-oh", "My name is ", "", False),
    ("percenthack", LST, "The percent hack is not allowed.",
     "The percent hack is allowed for user%host@", ".", False),
    ("plusdomain", STR, "plusdomain", "Plus domain name is ", "", True),
    ("qmtproutes", LST, "No QMTP routes.", "QMTP route: ", "", False),
    ("maxrcpt", INT, "1000", "Most recipients per message: ", "", False),
    ("queueextra", LST, "No extra recipients.", "Every message is also sent to ", ".", False),
    ("queuelifetime", INT, "604800", "Message lifetime in the queue is ", " seconds", False),
    ("rcpthosts", LST, "SMTP clients may send messages only to local and virtual domains.",
     "SMTP clients may send messages to recipients at ", ".", False),
    ("morercpthosts", LST, "No effect.", "SMTP clients may send messages to recipients at ",
     ".", False),
    ("smtpgreeting", STR, "smtpgreeting", "SMTP greeting: 220 ", "", True),
    ("smtproutes", LST, "No artificial SMTP routes.", "SMTP route: ", "", False),
    ("timeoutconnect", INT, "60", "SMTP client connection timeout is ", " seconds", False),
    ("timeoutremote", INT, "1200", "SMTP client data timeout is ", " seconds", False),
    ("timeoutsmtpd", INT, "1200", "SMTP server data timeout is ", " seconds", False),
    ("timeoutlocal", INT, "86400", "Program delivery time limit is ", " seconds", False),
    ("tlsverify", LST, "No TLS requirements.", "TLS required for ", ".", False),
    ("virtualdomains", LST, "No virtual domains.", "Virtual domain: ", "", False),
]
_OTHER_KNOWN = {"morercpthosts.cdb", "qmqpservers", "servercert.pem", "recipientmap", "dkim"}


def _safe(data: bytes) -> bytes:
    return bytes(c if 32 <= c <= 126 else 95 for c in data)


def explain(controlDir: str) -> bytes:
    """The whole report for C{controlDir} (after the installation lines)."""
    def read(name: str) -> bytes | None:
        try:
            with open(os.path.join(controlDir, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError:
            return b"\0unreadable"

    me = read("me")
    meLine = me.split(b"\n", 1)[0].rstrip(b" \t\r") if me is not None else None
    out = []
    for name, kind, default, pre, post, fromMe in _FILES:
        data = read(name)
        out.append(b"\n" + name.encode() + b": ")
        if data == b"\0unreadable":
            out.append(b"Oops! Trouble reading this file.\n")
            continue
        if kind == LST:
            if data is None:
                out.append(b"(Default.) " + default.encode() + b"\n")
                continue
            out.append(b"\n")
            for line in data.split(b"\n"):
                line = line.rstrip(b" \t\r")
                if line and not line.startswith(b"#"):
                    out.append(pre.encode() + _safe(line) + post.encode() + b"\n")
            continue
        if data is None:
            value = meLine if fromMe and meLine else default.encode()
            out.append(b"(Default.) " + pre.encode() + value + post.encode() + b".\n")
            continue
        line = data.split(b"\n", 1)[0].rstrip(b" \t\r")
        if kind == INT:
            digits = line.lstrip(b" \t")
            n = 0
            for c in digits:
                if not 48 <= c <= 57:
                    break
                n = n * 10 + c - 48
            out.append(pre.encode() + b"%d" % n + post.encode() + b".\n")
        else:
            out.append(pre.encode() + _safe(line) + b".\n")
    known = {f[0] for f in _FILES} | _OTHER_KNOWN
    for name in sorted(os.listdir(controlDir)):
        if name not in known:
            out.append(b"\n" + name.encode("utf-8", "replace")
                       + b": I have no idea what this file does.\n")
    return b"".join(out)


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(b"qmail-showctl: usage: qmail-showctl\n")
        return 0
    head = (b"qmail home directory: %s.\nuser-ext delimiter: -.\nsubdirectory split: 23.\n"
            % os.fsencode(env.home.path))
    try:
        body = explain(env.home.control)
    except OSError:
        env.stdout.write(head + b"Oops! Unable to chdir to control.\n")
        return 111
    env.stdout.write(head + body)
    env.stdout.flush()
    return 0
