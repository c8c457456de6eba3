"""
The cheap log path (docs/behaviour/operations.md 21.4.1): the daemon's log lines, byte for byte
what twistd's C{textFileLogObserver} writes (or the JSON lines of L{qmtwist.logformat.jsonLines}),
made with a cached format check and a timestamp prefix cached per second, collected in memory
and written in one C{write}+C{flush} per L{INTERVAL} seconds, when L{LIMIT} characters are
waiting, before a rotation, and at shutdown after the services stopped.

Twisted's path costs per line a C{string.Formatter} walk, two C{strftime}s, a C{write} and a
C{flush}; this one costs a C{str.format_map}, a dict look-up and a C{list.append}.
"""

from __future__ import annotations

import atexit
import re
import threading
from typing import Any, Callable, Protocol

from twisted.logger import ILogObserver, LogLevel, eventAsJSON, formatEvent
from twisted.logger import formatEventAsClassicLogText, formatTime
from zope.interface import implementer

INTERVAL = 0.25
"""Seconds a line waits at most (tail -f stays live; a SIGKILL loses at most this much)."""
LIMIT = 64 * 1024
"""Characters waiting that make a write now (a burst does not grow the buffer without end)."""

_NOISE_FORMATS = frozenset(("Starting factory {factory!r}", "Stopping factory {factory!r}"))
_LEGACY_NOISE = ("Starting protocol ", "Stopping protocol ")
PORT_NOISE = re.compile(r".+ starting on \S+|\((TCP|UDP|UNIX) Port .* Closed\)")


class Target(Protocol):
    """What the lines go to: twistd's C{LogFile}, standard output."""

    def write(self, data: str) -> Any: ...

    def flush(self) -> Any: ...


class LineBuffer:
    """
    Lines waiting for one write. Thread-safe (a worker thread may log): a lock around append and
    swap; the timer is armed on the reactor thread. After L{close} every line is written at once
    (twistd logs "Main loop terminated." after the reactor stopped, when no timer runs).
    """

    def __init__(self, target: Target, clock: Any, interval: float = INTERVAL,
                 limit: int = LIMIT) -> None:
        self.target = target
        self.clock = clock
        self.interval = interval
        self.limit = limit
        self.direct = False
        self._lines: list[str] = []
        self._size = 0
        self._call: Any = None
        self._lock = threading.Lock()
        self._thread = threading.get_ident()

    def add(self, line: str) -> None:
        """Queue C{line}; write now if over the limit or closed, else make sure the timer runs."""
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            now = self.direct or self._size >= self.limit
        if now:
            self.flush()
        elif self._call is None:
            if threading.get_ident() == self._thread:
                self._arm()
            else:
                self.clock.callFromThread(self._arm)

    def _arm(self) -> None:
        if self._call is None and self._lines:
            self._call = self.clock.callLater(self.interval, self._timer)

    def _timer(self) -> None:
        self._call = None
        self.flush()

    def flush(self) -> None:
        """Write what is waiting, in one C{write} and one C{flush} of the target."""
        with self._lock:
            if not self._lines:
                return
            text = "".join(self._lines)
            self._lines = []
            self._size = 0
            self.target.write(text)
            self.target.flush()

    def close(self) -> None:
        """Write what is waiting and every later line at once (at reactor shutdown, at exit)."""
        self.direct = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.flush()


class _Stamp:
    """twistd's C{formatTime} (RFC 3339, local offset), computed once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second or when < 0:
            self._text = formatTime(when)
            self._second = second
        return self._text


def classicText() -> Callable[[dict[str, Any], str], str | None]:
    """
    The text line of C{formatEventAsClassicLogText} for an event whose message is C{text}:
    C{"STAMP [SYSTEM] TEXT\\n"}, continuation lines indented by a tab. Events with a failure
    go through Twisted's own function (their traceback).
    """
    stamp = _Stamp()
    systems: dict[tuple[Any, Any], str] = {}

    def render(event: dict[str, Any], text: str) -> str | None:
        if "log_failure" in event:
            return formatEventAsClassicLogText(event, formatTime=stamp)  # type: ignore[arg-type]
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            key = (event.get("log_namespace", "-"), event.get("log_level"))
            system = systems.get(key)
            if system is None:
                level = key[1].name if key[1] is not None else "-"
                system = systems.setdefault(key, f"{key[0]}#{level}")
        elif not isinstance(system, str):
            try:
                system = str(system)
            except Exception:
                system = "UNFORMATTABLE"
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        return f"{stamp(event.get('log_time'))} [{system}] {text}\n"

    return render


def jsonText(event: dict[str, Any], text: str) -> str:
    """The JSON line of L{qmtwist.logformat.jsonLines}: the event plus C{"text"}."""
    return eventAsJSON(dict(event, text=text)) + "\n"


_FAST: dict[str, bool] = {}


def messageText(event: dict[str, Any]) -> str:
    """
    L{formatEvent}'s text, by C{str.format_map} when the format allows it (no C{"()"} calls,
    plain text format): the same result for the same fields, at C speed. Anything else, and
    any failure, goes to Twisted's L{formatEvent} (its "Unable to format event" text).
    """
    fmt = event.get("log_format")
    if type(fmt) is str and "log_flattened" not in event:
        fast = _FAST.get(fmt)
        if fast is None:
            fast = _FAST[fmt] = "()" not in fmt
        if fast:
            try:
                return fmt.format_map(event)
            except Exception:
                pass
    return formatEvent(event)


def isNoiseText(event: dict[str, Any], text: str) -> bool:
    """Twisted's per-factory, per-port and per-DNS-query lines (L{qmtwist.logformat.isNoise})."""
    if event.get("log_format") in _NOISE_FORMATS:
        return True
    if event.get("log_namespace") == "log_legacy":
        return text.startswith(_LEGACY_NOISE) or bool(PORT_NOISE.fullmatch(text))
    return False


@implementer(ILogObserver)
class BufferedObserver:
    """
    The daemon's observer: drops debug events before any formatting unless C{debug}, drops
    noise unless C{noise}, renders the rest with C{render} (L{classicText} or L{jsonText})
    into C{buffer}.
    """

    def __init__(self, buffer: LineBuffer, render: Callable[[dict[str, Any], str], str | None],
                 noise: bool = False, debug: bool = False) -> None:
        self.buffer = buffer
        self.render = render
        self.noise = noise
        self.skip = frozenset() if debug else frozenset((LogLevel.debug,))

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level") in self.skip:
            return
        text = messageText(event)
        if not self.noise and isNoiseText(event, text):
            return
        line = self.render(event, text)
        if line:
            self.buffer.add(line)


def onShutdown(buffer: LineBuffer, reactor: Any) -> None:
    """
    Write C{buffer} after the services stopped ("after" shutdown: "status: exiting" is in it),
    then every line at once; and at interpreter exit (a start-up that never ran the reactor).
    """
    reactor.addSystemEventTrigger("after", "shutdown", buffer.close)
    atexit.register(buffer.close)
