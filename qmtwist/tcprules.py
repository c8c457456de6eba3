"""
tcpserver access rules in tcprules' text format (docs/behaviour/tcpserver.md 8.1, 8.2).

qmail's servers run under djb's tcpserver, which reads a cdb made by tcprules. qmtwist reads the
text form directly (no cdb step). L{parseRules} turns the text into L{Rule} records and warning
lines; L{RuleSet.match} picks the rule for a peer (IP address, host name if known) and returns a
L{Decision}: allow or deny plus the environment to hand to the session. L{RulesFile} keeps one
file's rules current; the listener calls L{RulesFile.refresh}, which runs the blocking
L{checkRules} (stat, reread) on a thread, or skips it when an inotify watch on the file's
directory (L{qmtwist.dirwatch}) says nothing changed (docs/behaviour/control.md 2.4).

Deviations: C{info@address} rules are parsed but never match (no ident lookups); IPv6 addresses
are accepted as exact addresses or as prefixes ending at a colon boundary [qmtwist].
"""

from __future__ import annotations

import os
from typing import Any, Callable

from attrs import field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from qmtwist.dirwatch import DirWatches, fileStamp


@frozen
class Rule:
    """
    One line of a rules file.

    @ivar address: the address part (C{1.2.3.4}, C{1.2.3.}, C{1.2.3.37-53}, C{=host}, C{""}...).
    @ivar allow: C{True} for C{allow}, C{False} for C{deny}.
    @ivar env: C{(name, value)} pairs in file order; C{value} L{None} means C{!NAME} (remove).
    @ivar line: the line number in the file (1-based).
    """

    address: str
    allow: bool
    env: tuple[tuple[str, bytes | None], ...] = ()
    line: int = 0


@frozen
class Decision:
    """
    The outcome for one connection.

    @ivar allow: whether the session may start.
    @ivar env: variables to set (bytes values).
    @ivar remove: variables to remove from the inherited environment.
    @ivar rule: the rule that matched, or L{None} (no rule: allow, nothing set).
    """

    allow: bool
    env: dict[str, bytes] = field(factory=dict)
    remove: frozenset[str] = frozenset()
    rule: Rule | None = None

    def apply(self, base: dict[str, bytes]) -> dict[str, bytes]:
        """The session environment: C{base} minus removed names plus the set ones."""
        out = {k: v for k, v in base.items() if k not in self.remove}
        out.update(self.env)
        return out


class RulesSyntaxError(ValueError):
    """A rules line cannot be parsed."""


def _splitLine(line: str) -> tuple[str, str]:
    # The address may contain colons (IPv6), the instructions start with allow or deny.
    start = 0
    while True:
        i = line.find(":", start)
        if i < 0:
            raise RulesSyntaxError(line)
        rest = line[i + 1:]
        for word in ("allow", "deny"):
            if rest.startswith(word) and (len(rest) == len(word) or rest[len(word)] == ","):
                return line[:i], rest
        start = i + 1


def parseInstructions(text: str) -> tuple[bool, tuple[tuple[str, bytes | None], ...]]:
    """
    Parse C{allow,VAR="value",!OTHER}.

    @raise RulesSyntaxError: anything else.
    """
    if text.startswith("allow"):
        allow, rest = True, text[5:]
    elif text.startswith("deny"):
        allow, rest = False, text[4:]
    else:
        raise RulesSyntaxError(text)
    env: list[tuple[str, bytes | None]] = []
    while rest:
        if not rest.startswith(","):
            raise RulesSyntaxError(text)
        rest = rest[1:]
        if rest.startswith("!"):
            end = rest.find(",")
            name = rest[1:] if end < 0 else rest[1:end]
            if not name or "=" in name:
                raise RulesSyntaxError(text)
            env.append((name, None))
            rest = "" if end < 0 else rest[end:]
            continue
        eq = rest.find("=")
        if eq <= 0 or len(rest) < eq + 2:
            raise RulesSyntaxError(text)
        name = rest[:eq]
        if "," in name:
            raise RulesSyntaxError(text)
        delim = rest[eq + 1]
        close = rest.find(delim, eq + 2)
        if close < 0:
            raise RulesSyntaxError(text)
        env.append((name, rest[eq + 2:close].encode("utf-8", "surrogateescape")))
        rest = rest[close + 1:]
    return allow, tuple(env)


def _validAddress(address: str) -> bool:
    if address == "" or address.startswith("="):
        return True
    if "@" in address:
        address = address.split("@", 1)[1]
    if "-" in address:
        head, _, last = address.rpartition(".")
        lo, _, hi = last.partition("-")
        return bool(head) and lo.isdigit() and hi.isdigit()
    allowed = set("0123456789abcdefABCDEF.:")
    return all(c in allowed for c in address)


def parseRules(data: bytes, name: str = "smtp") -> tuple[list[Rule], list[str]]:
    """
    Parse a rules file.

    @param data: the file's bytes.
    @param name: the service name used in warnings (C{rules/NAME}).
    @return: the rules in file order and the warning lines for lines that cannot be parsed.
    """
    rules: list[Rule] = []
    warnings: list[str] = []
    text = data.decode("utf-8", "surrogateescape")
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip(" \t\r")
        if not line or line.startswith("#"):
            continue
        try:
            address, instructions = _splitLine(line)
            if not _validAddress(address):
                raise RulesSyntaxError(line)
            allow, env = parseInstructions(instructions)
        except RulesSyntaxError:
            warnings.append(f"warning: rules/{name} line {n}: unable to parse this line: {line}")
            continue
        # host names and IPv6 peers are compared in lower case: "=Evil.Example" must match
        rules.append(Rule(address.lower(), allow, env, n))
    return rules, warnings


def _inRange(address: str, ip: str) -> bool:
    head, _, last = address.rpartition(".")
    lo, _, hi = last.partition("-")
    ipHead, _, ipLast = ip.rpartition(".")
    return ipHead == head and ipLast.isdigit() and int(lo) <= int(ipLast) <= int(hi)


class RuleSet:
    """
    A parsed rules file, indexed for L{match}.

    @ivar rules: the rules in file order.
    @ivar needsHostname: whether any rule names a host (C{=...}), so the listener must look up
        C{TCPREMOTEHOST} (docs/behaviour/tcpserver.md 8.4).
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._first: dict[str, Rule] = {}
        self._ranges: list[Rule] = []
        for r in rules:
            if "@" in r.address:
                continue  # info@address: never matches without ident
            if "-" in r.address and not r.address.startswith("="):
                self._ranges.append(r)
                continue
            self._first.setdefault(r.address, r)
        self.needsHostname = any(r.address.startswith("=") for r in rules)

    def match(self, ip: str, host: str | None = None) -> Decision:
        """
        The decision for a peer (docs/behaviour/tcpserver.md 8.2).

        @param ip: C{TCPREMOTEIP}.
        @param host: C{TCPREMOTEHOST}, or L{None} when unknown.
        """
        rule = self._find(ip, host)
        if rule is None:
            return Decision(True)
        env: dict[str, bytes] = {}
        remove: set[str] = set()
        for k, v in rule.env:
            if v is None:
                remove.add(k)
                env.pop(k, None)
            else:
                env[k] = v
                remove.discard(k)
        return Decision(rule.allow, env, frozenset(remove), rule)

    def _find(self, ip: str, host: str | None) -> Rule | None:
        exact = [r for r in (self._first.get(ip),) if r is not None]
        exact += [r for r in self._ranges if _inRange(r.address, ip)]
        if exact:
            return min(exact, key=lambda r: r.line)
        if host is not None:
            host = host.lower()
            r = self._first.get("=" + host)
            if r is not None:
                return r
        sep = ":" if ":" in ip else "."
        for i in range(len(ip) - 1, 0, -1):
            if ip[i - 1] == sep:
                r = self._first.get(ip[:i])
                if r is not None:
                    return r
        if host is not None:
            for i, c in enumerate(host):
                if c == ".":
                    r = self._first.get("=" + host[i:])
                    if r is not None:
                        return r
            r = self._first.get("=")
            if r is not None:
                return r
        return self._first.get("")


def checkRules(path: str | None, name: str, stamp: object,
               force: bool) -> tuple[object, RuleSet | None, list[str], bool]:
    """
    Blocking: stat the rules file and reread it when C{force} or it changed since C{stamp}.

    @return: the new stamp, the new rule set (L{None}: keep the one in force), warning lines,
        and whether a watch on the file's directory sees its changes (L{fileStamp}).
    """
    if path is None:
        return None, (RuleSet([]) if force or stamp is not None else None), [], False
    new, usable = fileStamp(path, stamp)
    if not force and new == stamp:
        return stamp, None, [], usable
    if new is None:
        return None, RuleSet([]), [], usable
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, RuleSet([]), [], usable
    except OSError as e:
        return stamp, None, [
            f"warning: unable to read rules/{name}: {e.strerror}; keeping previous rules"], False
    rules, warnings = parseRules(data, name)
    return new, RuleSet(rules), warnings, usable


class RulesFile:
    """
    A rules file reread when its mtime, size or inode changes or on L{reload}
    (docs/behaviour/tcpserver.md 8.2).

    A missing file means "allow everybody, set nothing"; a file that cannot be read keeps the
    previous rule set. The listener calls L{refresh}, which checks the file on a thread, so the
    reactor never stats or opens it; L{ruleSet} then holds the rules to apply. L{reload} and
    L{current} do the same check on the calling thread (start-up, tools and tests). Given the
    daemon's L{qmtwist.dirwatch.DirWatches}, the file's directory is watched with inotify and
    L{refresh} skips the thread job while no event names the file (control.md 2.4).
    """

    def __init__(self, path: str | None, name: str, watches: DirWatches | None = None) -> None:
        self.path = path
        self.name = name
        self.ruleSet = RuleSet([])
        self._stamp: object = ()
        self._generation = 0
        self._waiting: list[Deferred[list[str]]] = []
        self._running: list[Deferred[list[str]]] = []
        self._force = False
        self._checking = False
        # no path, no rules: nothing to watch (every refresh is the thread job, as before)
        self._watch = None if watches is None or path is None else watches.directory(
            os.path.dirname(os.path.abspath(path)), [os.path.basename(path)])

    def _apply(self, result: tuple[object, RuleSet | None, list[str], bool]) -> list[str]:
        stamp, ruleSet, warnings, _ = result
        self._stamp = stamp
        if ruleSet is not None:
            self.ruleSet = ruleSet
        return warnings

    def reload(self, force: bool = True) -> list[str]:
        """
        Reread the file (when C{force} or its mtime changed), blocking.

        @return: warning lines to log.
        """
        self._generation += 1
        return self._apply(checkRules(self.path, self.name, self._stamp, force))

    def current(self) -> tuple[RuleSet, list[str]]:
        """The rules for a new connection, rereading the file if it changed (blocking)."""
        warnings = self.reload(force=False)
        return self.ruleSet, warnings

    def refresh(self, runInThread: Callable[[Callable[[], Any]], Any],
                force: bool = False) -> Deferred[list[str]]:
        """
        L{reload} on a thread: afterwards L{ruleSet} is the file as it is now.

        Requests that arrive while a check runs share the next one (as
        L{qmtwist.context.ControlCache.refresh}), so at most one check runs at a time. With the
        watch in force and no event for the file since the last check began, there is no thread
        job (the result is that of the check under way, if one is).

        @param runInThread: the context's runner (C{deferToThreadPool}).
        @param force: reread even if the file looks unchanged (SIGHUP).
        @return: fires with the check's warning lines (for the first request of a check; the
            others get none), or fails with what the check raised.
        """
        d: Deferred[list[str]] = Deferred()
        if not force and self._watch is not None and not self._watch.changed():
            if not self._checking:
                return succeed([])
            self._running.append(d)
            return d
        self._waiting.append(d)
        self._force = self._force or force
        if not self._checking:
            self._startCheck(runInThread)
        return d

    def _startCheck(self, runInThread: Callable[[Callable[[], Any]], Any]) -> None:
        waiting, self._waiting = self._waiting, []
        self._running = waiting
        force, self._force = self._force, False
        self._checking = True
        generation = self._generation
        path, name, stamp = self.path, self.name, self._stamp
        watch = self._watch
        token = watch.begin() if watch is not None else None  # clears the events first
        force = force or (token is not None and token.forced)
        usable = [False]

        def check() -> tuple[object, RuleSet | None, list[str], bool]:
            if token is not None:
                token.arm()  # before the stat: an edit from now on is an event
            return checkRules(path, name, stamp, force)

        def done(result: tuple[object, RuleSet | None, list[str], bool]) -> list[str]:
            if generation != self._generation:  # a blocking reload came in between
                return result[2]
            usable[0] = result[3]
            return self._apply(result)

        def finished(result: list[str] | Failure) -> None:
            if watch is not None and token is not None:
                watch.end(token, usable[0])
            self._checking = False
            self._running = []
            for i, w in enumerate(waiting):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result if i == 0 else [])
            if self._waiting and not self._checking:
                self._startCheck(runInThread)

        d = runInThread(check)
        d.addCallback(done)
        d.addBoth(finished)
