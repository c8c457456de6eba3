"""
qmail's control files, read into one frozen snapshot (docs/behaviour/control.md 2).

L{load} is pure apart from reading files: it returns a L{Control} and the warning lines of
docs/behaviour/control.md 2.1 (C{warning: control/NAME line N: problem; ...}). A file that
cannot be read is an alert: at start-up it is fatal (L{ControlError}); on reload the previous
value is kept. Values that become parts of addresses stay C{bytes}.

Every control file is read with L{readControlFile} (L{qmtwist.controlfile}): one that is not a
regular file (a FIFO would block the reader for good) is never opened for reading and counts as
missing. Values that end up in envelopes, headers or protocol lines (the LINE files,
C{queueextra}, C{virtualdomains}) are checked with L{unsafeValue}; a bad one keeps the default
or the value in force. L{load} does blocking file I/O: the daemon calls it at start-up, on
SIGHUP, or on a thread (L{qmtwist.context.ControlCache.refresh}).
"""

from __future__ import annotations

import os
from typing import Callable

from attrs import evolve, field, frozen

# The reader's names stay importable from here for the modules that have always done so.
from qmtwist.controlfile import NotRegularFile, notRegularWarning, readControlFile
from qmtwist.errors import ControlError
from qmtwist.rcpthosts import RcptHosts

LINE, INT, LIST, MAP, TEXT = "LINE", "INT", "LIST", "MAP", "TEXT"


@frozen
class Control:
    """A snapshot of every control file; see docs/behaviour/control.md 2.2 for meanings and defaults."""

    me: bytes = b""
    badmailfrom: tuple[bytes, ...] = ()
    bouncefrom: bytes = b"MAILER-DAEMON"
    bouncehost: bytes = b""
    concurrencydestination: int = 0  # [qmtwist] remote deliveries at once to one domain; 0: half
    concurrencylocal: int = 10
    concurrencyrecipient: int = 0  # [qmtwist] local deliveries at once to one address; 0: half
    concurrencyremote: int = 20
    databytes: int = 0
    defaultdelivery: bytes = b"./Maildir/\n"
    defaultdomain: bytes = b""
    defaulthost: bytes = b""
    dmarcreject: int = 0  # [qmtwist] 1: refuse DMARC p=reject failures (authentication.md 22.6)
    doublebouncehost: bytes = b""
    doublebounceto: bytes = b"postmaster"
    envnoathost: bytes = b""
    helohost: bytes = b""
    idhost: bytes = b""
    localiphost: bytes = b""
    locals: frozenset[bytes] = frozenset()
    maxrcpt: int = 1000
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
    timeoutlocal: int = 86400  # [qmtwist] qmail has no limit on a program delivery
    timeoutsmtpd: int = 1200
    tlsverify: tuple[bytes, ...] = ()
    virtualdomains: dict[bytes, bytes] = field(factory=dict)
    #: Derived, not a file: the rcpthosts lookup table, built once per snapshot here (where the
    #: snapshot is loaded) rather than per RCPT or connection (docs/behaviour/smtp.md 7.5).
    rcpthostsTable: RcptHosts = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "rcpthostsTable", RcptHosts.build(
            self.rcpthosts, self.morercpthosts, self.locals, self.virtualdomains))

    def isLocal(self, domain: bytes) -> bool:
        """Whether C{domain} is listed in C{locals} (case-insensitive)."""
        return domain.lower() in self.locals


# name -> (format, default-from-me?, literal fallback when me is missing)
_FILES: dict[str, tuple[str, bool, bytes | None]] = {
    "badmailfrom": (LIST, False, None),
    "bouncefrom": (LINE, False, None),
    "bouncehost": (LINE, True, b"bouncehost"),
    "concurrencydestination": (INT, False, None),
    "concurrencylocal": (INT, False, None),
    "concurrencyrecipient": (INT, False, None),
    "concurrencyremote": (INT, False, None),
    "databytes": (INT, False, None),
    "defaultdelivery": (TEXT, False, None),
    "defaultdomain": (LINE, True, b"defaultdomain"),
    "defaulthost": (LINE, True, b"defaulthost"),
    "dmarcreject": (INT, False, None),
    "doublebouncehost": (LINE, True, b"doublebouncehost"),
    "doublebounceto": (LINE, False, None),
    "envnoathost": (LINE, True, b"envnoathost"),
    "helohost": (LINE, True, b""),
    "idhost": (LINE, True, b"idhost"),
    "localiphost": (LINE, True, b""),
    "locals": (LIST, True, None),
    "maxrcpt": (INT, False, None),
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
    "timeoutlocal": (INT, False, None),
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


def parseMap(
    data: bytes, warn: Callable[[int, str], None], checkValues: bool = False
) -> dict[bytes, bytes]:
    """
    MAP: C{key:value} split at the first colon, keys lowered; the last repeated key wins.

    @param checkValues: the values become parts of addresses (C{virtualdomains} prefixes): a
        line whose value L{unsafeValue} refuses is ignored.
    """
    out: dict[bytes, bytes] = {}
    for n, line in parseList(data):
        if b":" not in line:
            warn(n, "no colon; line ignored")
            continue
        key, value = line.split(b":", 1)
        problem = unsafeValue(value) if checkValues else None
        if problem is not None:
            warn(n, f"{problem}; line ignored")
            continue
        out[key.lower()] = value
    return out


#: Envelope addresses (and so every value that becomes one) are shorter than this (qmail-queue).
MAX_VALUE = 1003


def unsafeValue(value: bytes, text: bool = False) -> str | None:
    """
    Why C{value} may not go into an envelope, a header or a protocol line, or L{None}.

    A CR, LF, NUL or any other control character in a host name or address would let a control
    file inject header lines or protocol commands, and the queue refuses such an envelope
    address (qmail-queue's 91, "qq internal bug"), so one bad byte in C{queueextra} would make
    every injection fail. Values of 1003 bytes or more cannot be envelope addresses.

    @param text: the value is free text (C{smtpgreeting}): a TAB is allowed.
    """
    for ch in value:
        if (ch < 32 and not (text and ch == 9)) or ch == 127:
            return "contains a control character"
    if len(value) >= MAX_VALUE:
        return f"longer than {MAX_VALUE - 1} bytes"
    return None


#: LIST files whose entries become envelope addresses: a bad line is ignored.
_ADDRESS_LISTS = {"queueextra"}
#: MAP files whose values become parts of addresses: a bad line is ignored.
_ADDRESS_MAPS = {"virtualdomains"}
#: LINE files that are free text rather than a host or an address: a TAB may stay.
_TEXT_LINES = {"smtpgreeting"}


def parseListEntries(
    name: str, data: bytes, warn: Callable[[int, str], None]
) -> list[bytes]:
    """
    The entries of LIST file C{name}, as L{load} keeps them: a line with NUL is ignored, and so
    is, in C{queueextra}, a line that L{unsafeValue} refuses; host lists are lower-cased.
    """
    entries = []
    for n, entry in parseList(data):
        if b"\0" in entry:
            warn(n, "contains NUL; line ignored")
            continue
        if name in _ADDRESS_LISTS:
            problem = unsafeValue(entry)
            if problem is not None:
                warn(n, f"{problem}; line ignored")
                continue
        entries.append(entry.lower() if name in _LOWERED else entry)
    return entries


def readList(controlDir: str, name: str) -> tuple[list[bytes], list[str]]:
    """
    One LIST file read on its own (C{queueextra}, read at every commit), with the checks and
    warning lines of L{load}; a missing or non-regular file is an empty list.

    @raise OSError: the file exists but cannot be read.
    """
    warnings: list[str] = []
    try:
        data = readControlFile(os.path.join(controlDir, name))
    except NotRegularFile:
        return [], [notRegularWarning(name)]
    if data is None:
        return [], warnings

    def warn(n: int, problem: str) -> None:
        warnings.append(f"warning: control/{name} line {n}: {problem}")

    return parseListEntries(name, data, warn), warnings


def _shown(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace") if value else "(empty)"
    return str(value)


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
            raw[name] = readControlFile(os.path.join(controlDir, name))
        except NotRegularFile:
            warnings.append(notRegularWarning(name))
            raw[name] = None
        except OSError:
            if previous is None:
                raise ControlError(f"alert: unable to read control/{name}")
            warnings.append(f"alert: unable to reread control/{name}")
            raw[name] = None
            values[name] = getattr(previous, name)
    if "me" not in values:
        values["me"] = _lineValue("me", raw["me"], b"", previous, warnings)
    me = values["me"]
    assert isinstance(me, bytes)
    if not me and raw["locals"] is None and "locals" not in values:
        if previous is None:
            raise ControlError("alert: cannot start: unable to read controls")
        return previous, warnings + ["alert: unable to reread control/me"]
    try:
        if readControlFile(os.path.join(controlDir, "recipientmap")) is not None:
            warnings.append("warning: control/recipientmap is obsolete (qmail 1.01); ignored")
    except (OSError, NotRegularFile):
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
            lineDefault = _defaultFor(name, fromMe, literal, me)
            assert isinstance(lineDefault, bytes)
            values[name] = _lineValue(name, data, lineDefault, previous, warnings)
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
            entries = parseListEntries(name, data, warn)
            if name in ("locals", "percenthack"):
                values[name] = frozenset(entries)
            else:
                values[name] = tuple(entries)
        elif fmt == MAP:
            values[name] = parseMap(data, warn, checkValues=name in _ADDRESS_MAPS)
    if (
        raw["locals"] is None
        and "locals" in _FILES
        and previous is None
        and not isinstance(values.get("locals"), frozenset)
    ):
        values["locals"] = frozenset([me.lower()]) if me else frozenset()
    return evolve(base, **values), warnings  # type: ignore[arg-type]


def _lineValue(
    name: str, data: bytes | None, default: bytes, previous: Control | None,
    warnings: list[str],
) -> bytes:
    """
    A LINE file's value; one that L{unsafeValue} refuses is replaced by the default (at start)
    or by the value in force (at a reread), with a warning that does not repeat the bad bytes.
    """
    value = parseLine(data) if data is not None else b""
    if not value:
        return default
    problem = unsafeValue(value, text=name in _TEXT_LINES)
    if problem is None:
        return value
    if previous is not None:
        fallback: bytes = getattr(previous, name)
        what = "keeping previous value"
    else:
        fallback, what = default, "using default"
    warnings.append(f"warning: control/{name} line 1: {problem}; {what} {_shown(fallback)}")
    return fallback


def _defaultFor(name: str, fromMe: bool, literal: bytes | None, me: bytes) -> object:
    if name == "locals":
        return frozenset([me.lower()]) if me else frozenset()
    if fromMe:
        return me if me else (literal or b"")
    return getattr(Control(), name)
