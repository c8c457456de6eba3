"""
Inbound verification on the MX listener (docs/behaviour/authentication.md): SPF, DKIM and DMARC
for mail from clients that are neither relay clients nor authenticated, reported in an
C{Authentication-Results} header (RFC 8601) at the top of the queued message.

  - L{qmtwist.inbound.dns}: synchronous DNS for the libraries (pyspf, dkimpy) on a worker
    thread, answered by the daemon's twisted.names resolver on the reactor thread;
  - L{qmtwist.inbound.checks}: the SPF, DKIM and DMARC checks (pyspf, dkimpy, dmarc and
    publicsuffixlist);
  - L{qmtwist.inbound.results}: the results and their header (authres);
  - L{qmtwist.inbound.message}: reading the queued message back and writing its final copy;
  - L{qmtwist.inbound.writer}: the hook into the SMTP session (an injector and a message writer
    that verify at the end of DATA, before the commit).
"""
