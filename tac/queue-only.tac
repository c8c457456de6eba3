# A queue-only host: the queue service and local/remote delivery, no network listener
# (a null client or an outgoing relay fed by qmail-inject/sendmail and by front ends that run
# tac/frontend.tac or `twistd qmtwist --no-queue` on the same home).
#   QMTWIST_HOME=/var/qmail twistd -ny tac/queue-only.tac
import os

from twisted.application import service

from qmtwist.logformat import forTac
from qmtwist.logstory import logPointer
from qmtwist.plugin import Options, buildServices

options = Options()
options.parseOptions([
    "--home", os.environ.get("QMTWIST_HOME", "qmtwist-home"),
    "--smtp", "none", "--qmtp", "none", "--pop3", "none",
])
application = service.Application("qmtwist-queue")
built = buildServices(options)
# twistd -n qmtwist's log: noise filtered, buffered; QMTWIST_LOG_FORMAT=json, QMTWIST_LOG_NOISE=1
forTac(application, built.top, logPointer(built.context.home))
