# A single host with everything: SMTP, QMTP and POP3 listeners and the queue service.
#   QMTWIST_HOME=/var/qmail twistd -ny tac/single-host.tac
# Same service objects as `twistd qmtwist` with its default options.
import os

from twisted.application import service

from qmtwist.plugin import Options, buildServices

options = Options()
options.parseOptions(["--home", os.environ.get("QMTWIST_HOME", "qmtwist-home")])
application = service.Application("qmtwist")
buildServices(options).top.setServiceParent(application)
