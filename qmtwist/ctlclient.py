"""
The client side of the control socket C{HOME/run/qmtwist-ctl.sock}
(L{qmtwist.queue.ctlserver} has the protocol; docs/behaviour/queue-control.md 17.2).

Plain blocking sockets and no Twisted, so C{mailq} run by an ordinary user needs nothing more
than the tools do.
"""

from __future__ import annotations

import errno
import json
import socket
from typing import Any

from qmtwist.home import Home

TIMEOUT = 60.0
MAX_ANSWER = 1 << 30


class ControlError(Exception):
    """The daemon could not be asked; the text is one line for stderr."""


def controlSocket(home: Home) -> str:
    """Where the daemon of C{home} listens for control requests."""
    return home.sub("run", "qmtwist-ctl.sock")


def ask(home: Home, request: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """
    Send one request and return the daemon's answer.

    @raise ControlError: no daemon listens, the socket may not be used, or the answer is cut.
    """
    path = controlSocket(home)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"not running (no {path})") from None
        except ConnectionRefusedError:
            raise ControlError(f"not running (nothing listens on {path})") from None
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                raise ControlError(f"unable to connect to {path}: permission denied "
                                   "(see docs/behaviour/queue-control.md 17.2)") from None
            raise ControlError(f"unable to connect to {path}: {e.strerror}") from None
        s.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        size = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise ControlError("answer too long")
    except TimeoutError:
        raise ControlError(f"no answer from {path} within {timeout:.0f} s") from None
    except OSError as e:
        raise ControlError(f"trouble talking to {path}: {e.strerror}") from None
    finally:
        s.close()
    data = b"".join(chunks)
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"bad answer from {path}") from None
    if not isinstance(answer, dict):
        raise ControlError(f"bad answer from {path}")
    return answer
