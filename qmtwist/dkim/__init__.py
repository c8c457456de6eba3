"""
DKIM signing of the mail that leaves by remote delivery (docs/behaviour/dkim.md).

L{qmtwist.dkim.keys} keeps the private keys under C{control/dkim/} (C{qmtwist dkim keygen},
C{qmtwist dkim list}); L{qmtwist.dkim.sign} computes the C{DKIM-Signature} header lines for a
queued message with dkimpy, streaming the body; L{qmtwist.dkim.command} is the C{qmtwist dkim}
subcommand. The remote agent calls L{qmtwist.dkim.sign.signFile} on a thread before each
delivery and the SMTP/QMTP client sends its lines in front of the message.
"""
