"""
C{qmtwist dkim keygen DOMAIN [--selector S] [--type rsa|ed25519]} and C{qmtwist dkim list}
(docs/commands.md, docs/behaviour/dkim.md 18.4).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from qmtwist.dkim.keys import DEFAULT_SELECTOR, TYPES, DKIMKeyError, keygen, listKeys
from qmtwist.home import Home

USAGE = ("usage: qmtwist dkim keygen DOMAIN [--selector S] [--type rsa|ed25519]\n"
         "       qmtwist dkim list\n")


def dkimCommand(home: Home, argv: list[str], stdout: TextIO | None = None,
                stderr: TextIO | None = None) -> int:
    """
    Make a key and print its DNS record, or list the keys (domain, selector, type, record).

    @return: 0 done; 100 usage error, bad name or selector in use; 111 I/O error.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if not argv or argv[0] not in ("keygen", "list"):
        err.write(USAGE)
        return 100
    if argv[0] == "list":
        if len(argv) != 1:
            err.write(USAGE)
            return 100
        try:
            for k in listKeys(home.control):
                out.write(f"{k.domain} {k.selector} {k.type} {k.record}\n")
        except DKIMKeyError as e:
            err.write(f"qmtwist dkim: fatal: {e.text}\n")
            return 111
        return 0
    p = argparse.ArgumentParser(prog="qmtwist dkim keygen", add_help=False)
    p.add_argument("domain")
    p.add_argument("--selector", default=DEFAULT_SELECTOR)
    p.add_argument("--type", default="rsa")
    opts, extra = p.parse_known_args(argv[1:])
    if extra or opts.type not in TYPES:
        err.write(USAGE)
        return 100
    try:
        key = keygen(home.control, opts.domain, opts.selector, opts.type)
    except DKIMKeyError as e:
        err.write(f"qmtwist dkim: fatal: {e.text}\n")
        return 100
    except OSError as e:
        err.write(f"qmtwist dkim: fatal: unable to write the key: {e}\n")
        return 111
    out.write(key.record + "\n")
    return 0
