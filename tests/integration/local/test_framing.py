"""The helper socket's framing: one netstring per job and per result (qmtwist/local/helper.py)."""

from __future__ import annotations

import json

from twisted.internet.testing import StringTransport

from qmtwist.delivery import Outcome
from qmtwist.local.child import HelperProtocol
from qmtwist.local.deliver import JobResult
from qmtwist.local.helper import MAX_FRAME, _Channel, frame
from qmtwist.netstring import NetstringParser


class _Reactor:
    running = False

    def callLater(self, delay, f, *a):
        pass


def _child() -> tuple[HelperProtocol, StringTransport]:
    proto = HelperProtocol(_Reactor(), runInThread=None)  # these jobs never reach a thread
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_jobWithoutDescriptorIsAnsweredWithADeferral():
    proto, transport = _child()
    data = frame({"id": 7, "job": {}})
    proto.dataReceived(data[:3])
    assert transport.value() == b""
    proto.dataReceived(data[3:])
    out: list[bytes] = []
    NetstringParser(out.append).feed(transport.value())
    [answer] = [json.loads(o) for o in out]
    assert answer["id"] == 7
    result = JobResult.fromJSON(answer["result"])
    assert result.outcome is Outcome.DEFERRAL
    assert b"no message descriptor came with the job" in result.text


def test_badOrOversizedNetstringClosesTheSocket(capsys):
    proto, transport = _child()
    proto.dataReceived(b'{"id": 1}\n')
    assert transport.disconnecting and transport.value() == b""
    assert "bad job netstring" in capsys.readouterr().err
    proto, transport = _child()
    proto.dataReceived(b"%d:" % (MAX_FRAME + 1))
    assert transport.disconnecting


def test_resultNetstringsReachTheHelperInOrder():
    class Helper:
        uid = 1000
        got: list[bytes] = []

        def resultFrame(self, content):
            self.got.append(content)

    helper = Helper()
    channel = _Channel(helper)
    channel.makeConnection(StringTransport())
    channel.dataReceived(frame({"id": 1}) + frame({"id": 2})[:4])
    channel.dataReceived(frame({"id": 2})[4:])
    assert [json.loads(c)["id"] for c in helper.got] == [1, 2]
