"""
qmail's control files, read into one frozen snapshot (docs/behaviour/control.md 2).

L{load} is pure apart from reading files: it returns a L{Control} and the warning lines of
docs/behaviour/control.md 2.1 (C{warning: control/NAME line N: problem; ...}). A file that cannot be read is
an
alert: at start-up it is fatal (L{ControlError}); on reload the previous value is kept.
Values that become parts of addresses stay C{bytes}.
"""

from __future__ import annotations

import os
from typing import Callable

from attrs import evolve, field, frozen

from qmtwist.errors import ControlError

LINE, INT, LIST, MAP, TEXT = "LINE", "INT", "LIST", "MAP", "TEXT"


@frozen
class Control:
    """A snapshot of every control file; see docs/behaviour/control.md 2.2 for meanings and defaults."""

    me: bytes = b""
    badmailfrom: tuple[bytes, ...] = ()
    bouncefrom: bytes = b"MAILER-DAEMON"
    bouncehost: bytes = b""
    concurrencylocal: int = 10
    concurrencyremote: int = 20
    databytes: int = 0
    defaultdelivery: bytes = b"./Maildir/\n"
    defaultdomain: bytes = b""
    defaulthost: bytes = b""
    doublebouncehost: bytes = b""
    doublebounceto: bytes = b"postmaster"
    envnoathost: bytes = b""
    helohost: bytes = b""
    idhost: bytes = b""
    localiphost: bytes = b""
    locals: frozenset[bytes] = frozenset()
    morercpthosts: tuple[bytes, ...] = ()
    percenthack: frozenset[bytes] = frozenset()
    plusdomain: bytes = b""
    qmtproutes: dict[bytes, bytes] = field(factory=dict)
    queueextra: tuple[bytes, ...] = ()
    queuelifetime: int = 604800
    rcpthosts: tuple[bytes, ...] | None = None
    smtpgreeting: bytes = b""
    smtproutes: dict[bytes, bytes] = field(factory=dict)
    timeoutconnect: int = 60
    timeoutremote: int = 1200
    timeoutsmtpd: int = 1200
    tlsverify: tuple[bytes, ...] = ()
    virtualdomains: dict[bytes, bytes] = field(factory=dict)

    def isLocal(self, domain: bytes) -> bool:
        """Whether C{domain} is listed in C{locals} (case-insensitive)."""
        return domain.lower() in self.locals


# name -> (format, default-from-me?, literal fallback when me is missing)
_FILES: dict[str, tuple[str, bool, bytes | None]] = {
    "badmailfrom": (LIST, False, None),
    "bouncefrom": (LINE, False, None),
    "bouncehost": (LINE, True, b"bouncehost"),
    "concurrencylocal": (INT, False, None),
    "concurrencyremote": (INT, False, None),
    "databytes": (INT, False, None),
    "defaultdelivery": (TEXT, False, None),
    "defaultdomain": (LINE, True, b"defaultdomain"),
    "defaulthost": (LINE, True, b"defaulthost"),
    "doublebouncehost": (LINE, True, b"doublebouncehost"),
    "doublebounceto": (LINE, False, None),
    "envnoathost": (LINE, True, b"envnoathost"),
    "helohost": (LINE, True, b""),
    "idhost": (LINE, True, b"idhost"),
    "localiphost": (LINE, True, b""),
    "locals": (LIST, True, None),
    "morercpthosts": (LIST, False, None),
    "percenthack": (LIST, False, None),
    "plusdomain": (LINE, True, b"plusdomain"),
    "qmtproutes": (MAP, False, None),
    "queueextra": (LIST, False, None),
    "queuelifetime": (INT, False, None),
    "rcpthosts": (LIST, False, None),
    "smtpgreeting": (LINE, True, b""),
    "smtproutes": (MAP, False, None),
    "timeoutconnect": (INT, False, None),
    "timeoutremote": (INT, False, None),
    "timeoutsmtpd": (INT, False, None),
    "tlsverify": (LIST, False, None),
    "virtualdomains": (MAP, False, None),
}

_LOWERED = {"locals", "percenthack", "rcpthosts", "morercpthosts", "badmailfrom"}


def _stripLine(line: bytes) -> bytes:
    return line.rstrip(b" \t\r\n")


def parseLine(data: bytes) -> bytes:
    """LINE: the first line, trailing blanks removed."""
    return _stripLine(data.split(b"\n", 1)[0])


def parseInt(data: bytes) -> int | None:
    """INT: the leading decimal digits of the first line, or L{None} when there are none."""
    line = parseLine(data).lstrip(b" \t")
    digits = b""
    for ch in line:
        if 48 <= ch <= 57:
            digits += bytes([ch])
        else:
            break
    return int(digits) if digits else None


def parseList(data: bytes) -> list[tuple[int, bytes]]:
    """LIST: C{(line number, entry)} for each non-empty, non-comment line."""
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        line = _stripLine(raw)
        if line and not line.startswith(b"#"):
            out.append((n, line))
    return out


def parseMap(data: bytes, warn: Callable[[int, str], None]) -> dict[bytes, bytes]:
    """MAP: C{key:value} split at the first colon, keys lowered; the last repeated key wins."""
    out: dict[bytes, bytes] = {}
    for n, line in parseList(data):
        if b":" not in line:
            warn(n, "no colon; line ignored")
            continue
        key, value = line.split(b":", 1)
        out[key.lower()] = value
    return out


def _readFile(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def load(
    controlDir: str, previous: Control | None = None
) -> tuple[Control, list[str]]:
    """
    Read every control file.

    @param controlDir: C{HOME/control}.
    @param previous: the snapshot in force (on reload); unreadable or malformed files keep its
        values.
    @return: the new snapshot and the warning/alert lines to log.
    @raise ControlError: at start-up (no C{previous}), a file cannot be read, or C{me} is
        missing and C{locals} too.
    """
    warnings: list[str] = []
    values: dict[str, object] = {}
    base = Control()
    raw: dict[str, bytes | None] = {}
    for name in ["me", *_FILES]:
        try:
            raw[name] = _readFile(os.path.join(controlDir, name))
        except OSError:
            if previous is None:
                raise ControlError(f"alert: unable to read control/{name}")
            warnings.append(f"alert: unable to reread control/{name}")
            raw[name] = None
            values[name] = getattr(previous, name)
    if "me" not in values:
        values["me"] = parseLine(raw["me"]) if raw["me"] is not None else b""
    me = values["me"]
    assert isinstance(me, bytes)
    if not me and raw["locals"] is None and "locals" not in values:
        if previous is None:
            raise ControlError("alert: cannot start: unable to read controls")
        return previous, warnings + ["alert: unable to reread control/me"]
    try:
        if _readFile(os.path.join(controlDir, "recipientmap")) is not None:
            warnings.append("warning: control/recipientmap is obsolete (qmail 1.01); ignored")
    except OSError:
        warnings.append("warning: control/recipientmap is obsolete (qmail 1.01); ignored")

    for name, (fmt, fromMe, literal) in _FILES.items():
        if name in values:
            continue
        data = raw[name]
        default = getattr(previous if previous is not None and data is not None else base, name)
        if data is None:
            values[name] = _defaultFor(name, fromMe, literal, me)
            continue

        def warn(n: int, problem: str, _name: str = name) -> None:
            warnings.append(f"warning: control/{_name} line {n}: {problem}")

        if fmt == LINE:
            values[name] = parseLine(data) or _defaultFor(name, fromMe, literal, me)
        elif fmt == TEXT:
            values[name] = data if data.strip() else base.defaultdelivery
        elif fmt == INT:
            number = parseInt(data)
            if number is None:
                fallback = default if previous is not None else _defaultFor(name, False, None, me)
                what = "keeping previous value" if previous is not None else "using default"
                warn(1, f"not a number; {what} {fallback}")
                values[name] = fallback
            else:
                if name == "timeoutsmtpd" and number <= 0:
                    number = 1
                values[name] = number
        elif fmt == LIST:
            entries = []
            for n, entry in parseList(data):
                if b"\0" in entry:
                    warn(n, "contains NUL; line ignored")
                    continue
                entries.append(entry.lower() if name in _LOWERED else entry)
            if name in ("locals", "percenthack"):
                values[name] = frozenset(entries)
            else:
                values[name] = tuple(entries)
        elif fmt == MAP:
            values[name] = parseMap(data, warn)
    if (
        raw["locals"] is None
        and "locals" in _FILES
        and previous is None
        and not isinstance(values.get("locals"), frozenset)
    ):
        values["locals"] = frozenset([me.lower()]) if me else frozenset()
    return evolve(base, **values), warnings  # type: ignore[arg-type]


def _defaultFor(name: str, fromMe: bool, literal: bytes | None, me: bytes) -> object:
    if name == "locals":
        return frozenset([me.lower()]) if me else frozenset()
    if fromMe:
        return me if me else (literal or b"")
    return getattr(Control(), name)
