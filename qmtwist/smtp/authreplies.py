"""
The reply lines of submission and SMTP AUTH (RFC 4954, RFC 6409; docs/behaviour/submission.md
16.2-16.4), byte-exact; pure. Each carries its enhanced status code (RFC 3463) after the reply
code and qmail's C{(#X.Y.Z)} at the end, as the other replies of qmtwist do.
"""

from __future__ import annotations

import base64

#: EHLO keyword inside TLS (PLAIN and LOGIN only; docs/behaviour/submission.md 16.2)
EHLO_AUTH = b"AUTH PLAIN LOGIN"

R_AUTH_OK = b"235 2.7.0 authentication successful (#2.7.0)"
R_AUTH_FAILED = b"535 5.7.8 authentication failed (#5.7.8)"
R_AUTH_TOOMANY = b"421 4.7.0 too many failed logins, closing connection (#4.7.0)"
R_AUTH_LIMITED = b"454 4.7.0 too many failed logins from your address, try later (#4.7.0)"
R_AUTH_TEMP = b"454 4.7.0 temporary authentication failure (#4.7.0)"
R_AUTH_NEEDTLS = b"538 5.7.11 encryption required for requested authentication mechanism (#5.7.11)"
R_AUTH_MECH = b"504 5.5.4 unrecognized authentication type (#5.5.4)"
R_AUTH_AGAIN = b"503 5.5.1 you are already authenticated (#5.5.1)"
R_AUTH_INMAIL = b"503 5.5.1 AUTH not allowed during a mail transaction (#5.5.1)"
R_AUTH_CANCELLED = b"501 5.0.0 authentication cancelled (#5.0.0)"
R_AUTH_SYNTAX = b"501 5.5.2 cannot decode the authentication response (#5.5.2)"

R_WANTAUTH = b"530 5.7.0 authentication required (#5.7.0)"
R_NOTYOURS = b"553 5.7.1 sorry, that address is not yours to send from (#5.7.1)"
R_OVERLIMIT = b"421 4.7.0 too many connections from your address (#4.7.0)"
R_SENDERTEMP = b"451 4.3.0 unable to check the sender now, try later (#4.3.0)"


def challenge(text: bytes) -> bytes:
    """C{334 BASE64}: a SASL challenge (C{334 } alone for an empty one)."""
    return b"334 " + base64.b64encode(text)
