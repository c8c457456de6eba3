"""
The listener options of C{twistd qmtwist} (docs/commands.md "Listeners"): each of C{--smtp},
C{--qmtp}, C{--pop3}, C{--submission}, C{--submissions} may be given several times, one listener
each (port 25 on IPv4 and on IPv6, POP3 and POP3S in one daemon); C{none} disables, and a
protocol given no endpoint gets its default. C{--smtp-rules} (and the others) may be repeated
too: the Nth rules file goes with the Nth endpoint of that protocol, the last one given with
any further endpoints, and without one the default C{HOME/rules/NAME}. Both submission
listeners take C{--submission-rules} (default C{HOME/rules/submission}) and, like SMTP,
C{--smtp-concurrency} and C{--smtp-per-ip}.

L{ListenerOptions} is mixed into L{qmtwist.plugin.Options}; L{endpoints} and L{settings} read
either that or a plain dict (the .tac files and tests), where a missing key means no listener
and a string one endpoint.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

#: the endpoint a protocol listens on when no option names one
DEFAULTS = {
    "smtp": "tcp:2525:interface=127.0.0.1",
    "qmtp": "tcp:2209:interface=127.0.0.1",
    "pop3": "tcp:2110:interface=127.0.0.1",
    "submission": "none",
    "submissions": "none",
}

SUBMISSION = ("submission", "submissions")

_HELP = {
    "smtp": "SMTP listener endpoint, or none",
    "qmtp": "QMTP listener endpoint, or none",
    "pop3": "POP3 listener endpoint (ssl:... for POP3S), or none",
    "submission": "submission listener endpoint (STARTTLS, AUTH), e.g. tcp:587",
    "submissions": "implicit-TLS submission listener endpoint, e.g. ssl:465",
}


def _adder(key: str, text: str) -> Callable[[Any, str], None]:
    def opt(self: Any, value: str) -> None:
        self[key].append(value)

    opt.__doc__ = text
    return opt


class ListenerOptions:
    """The repeatable listener options (see the module docstring) for a C{usage.Options}."""

    def __init__(self) -> None:
        super().__init__()
        for name in DEFAULTS:
            self[name] = []  # type: ignore[index]
        for name in ("smtp", "qmtp", "pop3", "submission"):
            self[f"{name}-rules"] = []  # type: ignore[index]

    opt_smtp = _adder("smtp", f"{_HELP['smtp']} (repeatable; default {DEFAULTS['smtp']})")
    opt_qmtp = _adder("qmtp", f"{_HELP['qmtp']} (repeatable; default {DEFAULTS['qmtp']})")
    opt_pop3 = _adder("pop3", f"{_HELP['pop3']} (repeatable; default {DEFAULTS['pop3']})")
    opt_submission = _adder("submission", f"{_HELP['submission']} (repeatable; default none)")
    opt_submissions = _adder("submissions",
                             f"{_HELP['submissions']} (repeatable; default none)")
    opt_smtp_rules = _adder("smtp-rules", "tcprules text file (default HOME/rules/smtp; "
                            "repeatable: the Nth for the Nth --smtp)")
    opt_qmtp_rules = _adder("qmtp-rules", "tcprules text file (default HOME/rules/qmtp; "
                            "repeatable)")
    opt_pop3_rules = _adder("pop3-rules", "tcprules text file (default HOME/rules/pop3; "
                            "repeatable)")
    opt_submission_rules = _adder("submission-rules", "tcprules text file for both submission "
                                  "listeners (default HOME/rules/submission; repeatable)")


def _listOf(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def endpoints(options: Mapping[str, Any], name: str) -> list[str]:
    """The endpoints protocol C{name} listens on: none for a missing key, the default for an
    empty list (L{ListenerOptions} given no such option), C{none} entries dropped."""
    value = options.get(name)
    if value is None:
        return []
    given = _listOf(value) or [DEFAULTS[name]]
    return [e for e in given if e and e != "none"]


def _rulesKey(name: str) -> str:
    return "submission" if name in SUBMISSION else name


def settings(options: Mapping[str, Any], name: str, index: int,
             rulesDir: str) -> tuple[str, int, int]:
    """
    The rules file, concurrency and per-address limit of the C{index}th listener of C{name}.

    @param rulesDir: C{HOME/rules}.
    """
    key = _rulesKey(name)
    rules = _listOf(options.get(f"{key}-rules"))
    path = rules[min(index, len(rules) - 1)] if rules else os.path.join(rulesDir, key)
    limits = "smtp" if name in SUBMISSION else name
    concurrency = int(options.get(f"{limits}-concurrency") or 40)
    perIP = options.get(f"{limits}-per-ip")
    return path, concurrency, 10 if perIP is None else int(perIP)
