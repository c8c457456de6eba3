"""twistd plugin: C{twistd qmtwist}. The module is imported lazily by twistd."""

from twisted.application.service import ServiceMaker

qmtwist = ServiceMaker(
    "qmtwist",
    "qmtwist.plugin",
    "The qmail mail system on Twisted: SMTP, QMTP and POP3 listeners and the queue service.",
    "qmtwist",
)
