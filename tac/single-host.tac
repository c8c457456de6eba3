# A single host with everything: SMTP, QMTP and POP3 listeners and the queue service.
#   QMTWIST_HOME=/var/qmail twistd -ny tac/single-host.tac
# Same service objects as `twistd qmtwist`; QMTWIST_SMTP / QMTWIST_QMTP / QMTWIST_POP3 override
# the listener endpoints (Twisted endpoint strings, or "none").
import os

from twisted.application import service

from qmtwist.logformat import forTac
from qmtwist.logstory import logPointer
from qmtwist.plugin import Options, buildServices

args = ["--home", os.environ.get("QMTWIST_HOME", "qmtwist-home")]
for name in ("smtp", "qmtp", "pop3"):
    value = os.environ.get("QMTWIST_" + name.upper())
    if value:
        args += ["--" + name, value]
options = Options()
options.parseOptions(args)
application = service.Application("qmtwist")
built = buildServices(options)
# twistd -n qmtwist's log: noise filtered, buffered; QMTWIST_LOG_FORMAT=json, QMTWIST_LOG_NOISE=1
forTac(application, built.top, logPointer(built.context.home))
