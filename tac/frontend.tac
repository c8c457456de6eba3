# A listeners-only front end sharing the home (and queue) of a host that runs the queue service:
# several of these may run to use more cores; they wake the queue service through queue/lock/trigger.
#   QMTWIST_HOME=/var/qmail QMTWIST_SMTP=tcp:25 twistd -ny tac/frontend.tac
import os

from twisted.application import service

from qmtwist.logformat import forTac
from qmtwist.logstory import logPointer
from qmtwist.plugin import Options, buildServices

options = Options()
options.parseOptions([
    "--home", os.environ.get("QMTWIST_HOME", "qmtwist-home"),
    "--smtp", os.environ.get("QMTWIST_SMTP", "tcp:2525:interface=127.0.0.1"),
    "--qmtp", os.environ.get("QMTWIST_QMTP", "none"),
    "--pop3", os.environ.get("QMTWIST_POP3", "none"),
    "--no-queue",
])
application = service.Application("qmtwist-frontend")
built = buildServices(options)
# twistd -n qmtwist's log: noise filtered, buffered; QMTWIST_LOG_FORMAT=json, QMTWIST_LOG_NOISE=1
forTac(application, built.top, logPointer(built.context.home))
