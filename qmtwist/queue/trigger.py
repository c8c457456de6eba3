"""
The trigger FIFO C{queue/lock/trigger} (qmail's lock/trigger): any injector in another process
writes a byte to wake the queue service, which reads it without blocking.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import abstract, fdesc


class TriggerReader(abstract.FileDescriptor):
    """Calls C{onTrigger} whenever bytes arrive on the FIFO; reopens it at EOF."""

    def __init__(self, reactor, path: str, onTrigger: Callable[[], None]) -> None:
        super().__init__(reactor)
        self.path = path
        self.onTrigger = onTrigger
        self._fd = -1
        self._open()

    def _open(self) -> None:
        # O_RDWR keeps a writer open ourselves, so the FIFO never reports EOF.
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        fdesc.setNonBlocking(self._fd)

    def fileno(self) -> int:
        return self._fd

    def doRead(self):
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return None
        if data:
            self.onTrigger()
        return None

    def connectionLost(self, reason) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
