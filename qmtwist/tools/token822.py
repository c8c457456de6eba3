"""
RFC 822 tokens as qmail-inject sees them (qmail's token822): parse, address lists, unparse.

qmail-inject reformats every address field it rewrites, so the exact spacing and line folding
of qmail's unparser are part of its visible behaviour (docs/behaviour/tools.md 12.1): a space after each colon
and comma, a space between adjacent words, C{<} preceded by a space, and a comma-separated list
folded before an address that would take the line past 80 columns (continuation lines start
with two spaces).

Tokens are C{(kind, value)} pairs; only atoms, quoted strings, domain literals and comments
carry a value (the text without its delimiters or backslashes).
"""

from __future__ import annotations

from typing import Callable

ATOM, QUOTE, LITERAL, COMMENT = "atom", "quote", "literal", "comment"
COMMA, AT, DOT, LEFT, RIGHT, SEMI, COLON = ",", "@", ".", "<", ">", ";", ":"

Token = tuple[str, bytes]
WORDS = (ATOM, QUOTE, LITERAL, COMMENT)

_PUNCT = {ord(c): c for c in ".,@<>:;"}
_NOT_ATOM = set(b" \t\r\n([\"<>;:@,.")
_ESCAPED = set(b'"[]()\\\r\n')


class ParseError(ValueError):
    """The text has an unbalanced quote, comment or literal, or a stray C{)} or C{]}."""


def parse(text: bytes) -> list[Token]:
    """
    Split C{text} into tokens.

    @raise ParseError: the text cannot be tokenized.
    """
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _PUNCT:
            out.append((_PUNCT[ch], b""))
            i += 1
        elif ch in b" \t\r\n":
            i += 1
        elif ch in b")]":
            raise ParseError("stray %c" % ch)
        elif ch in b'("[':
            kind, close = {40: (COMMENT, 41), 34: (QUOTE, 34), 91: (LITERAL, 93)}[ch]
            value = bytearray()
            level = 1
            while level:
                i += 1
                if i >= n:
                    raise ParseError("unbalanced")
                c = text[i]
                if kind == COMMENT and c == 40:
                    level += 1
                    value.append(c)
                elif c == close:
                    level -= 1
                    if level:
                        value.append(c)
                elif c == 92:
                    i += 1
                    if i >= n:
                        raise ParseError("unbalanced")
                    value.append(text[i])
                else:
                    value.append(c)
            out.append((kind, bytes(value)))
            i += 1
        else:
            value = bytearray()
            while True:
                if text[i] == 92:
                    i += 1
                    if i >= n:
                        break
                value.append(text[i])
                i += 1
                if i >= n or text[i] in _NOT_ATOM:
                    break
            kind = ATOM
            if any(c < 32 or c > 126 or c in b")]\\" for c in value):
                kind = QUOTE
            out.append((kind, bytes(value)))
    return out


def _needSpace(last: str | None, new: str) -> bool:
    if last is None:
        return False
    if last in (COLON, COMMA) or new == LEFT:
        return True
    return last in WORDS and new in WORDS


def unparse(tokens: list[Token], lineLength: int = 80) -> bytes:
    """Format tokens as qmail does, with a final LF, folding lists at C{lineLength}."""
    out = bytearray()
    lineStart = 0
    pending: int | None = None  # offset of the last optional line break ("\n ")

    def breakHere() -> None:
        nonlocal lineStart, pending
        end = len(out)
        if pending is not None and (not lineLength or end - lineStart <= lineLength):
            del out[pending:pending + 2]
        elif pending is not None:
            lineStart = pending + 1
        pending = len(out)
        out.extend(b"\n ")

    last: str | None = None
    for kind, value in tokens:
        if _needSpace(last, kind):
            out.append(32)
        last = kind
        if kind == COMMA:
            out.append(44)
            breakHere()
        elif kind in WORDS:
            opener, closer = {ATOM: (b"", b""), QUOTE: (b'"', b'"'), LITERAL: (b"[", b"]"),
                              COMMENT: (b"(", b")")}[kind]
            out.extend(opener)
            for c in value:
                if c in _ESCAPED:
                    out.append(92)
                out.append(c)
            out.extend(closer)
        else:
            out.extend(kind.encode())
    breakHere()
    del out[-1]
    return bytes(out)


def unquote(tokens: list[Token]) -> bytes:
    """The address text of tokens (comments dropped, quotes removed): the envelope form."""
    out = bytearray()
    for kind, value in tokens:
        if kind == LITERAL:
            out += b"[" + value + b"]"
        elif kind in (ATOM, QUOTE):
            out += value
        elif kind != COMMENT:
            out += kind.encode()
    return bytes(out)


def addressList(
    tokens: list[Token], rewrite: Callable[[list[Token]], list[Token]]
) -> list[Token]:
    """
    Rewrite each address of a header field given as tokens (field name and colon first).

    Scans right to left as qmail does, so C{rewrite} is called for the rightmost address first.
    Adjacent words that are not separated by a comma are separate addresses (a comma is
    inserted).

    @param rewrite: gets an address (tokens in order, without angle brackets) and returns it
        rewritten.
    @raise ParseError: misplaced group syntax or an unbalanced C{<>}.
    """
    out: list[Token] = []  # built reversed
    addr: list[Token] = []  # built reversed

    def flush(comma: bool = False) -> None:
        if addr:
            got()
            if comma:
                out.append((COMMA, b""))

    def got() -> None:
        rewritten = rewrite(list(reversed(addr)))
        out.extend(reversed(rewritten))
        addr.clear()

    beginning = 2
    t = len(tokens) - 1
    inGroup = False
    wordOk = True
    while t >= beginning:
        kind = tokens[t][0]
        if kind == SEMI:
            flush(comma=True)
            if inGroup:
                raise ParseError("nested group")
            inGroup = True
            wordOk = True
        elif kind == COLON:
            flush()
            if not inGroup:
                raise ParseError("colon outside a group")
            inGroup = False
            while t >= beginning and tokens[t][0] != COMMA:
                out.append(tokens[t])
                t -= 1
            if t >= beginning:
                out.append(tokens[t])
                t -= 1
            wordOk = True
            continue
        elif kind == RIGHT:
            flush(comma=True)
            out.append(tokens[t])
            t -= 1
            while t >= beginning and tokens[t][0] != LEFT:
                addr.append(tokens[t])
                t -= 1
            got()  # even when empty: <>
            if t < beginning:
                raise ParseError("unbalanced <>")
            out.append(tokens[t])
            t -= 1
            while t >= beginning and tokens[t][0] in (COMMENT, ATOM, QUOTE, AT, DOT):
                out.append(tokens[t])
                t -= 1
            wordOk = False
            continue
        elif kind in (ATOM, QUOTE, LITERAL):
            if not wordOk:
                flush(comma=True)
            wordOk = False
            addr.append(tokens[t])
            t -= 1
            continue
        elif kind == COMMENT:
            pass
        elif kind == COMMA:
            flush()
            wordOk = True
        else:
            wordOk = True
            addr.append(tokens[t])
            t -= 1
            continue
        out.append(tokens[t])
        t -= 1
    flush()
    t += 1
    while t > 0:
        t -= 1
        out.append(tokens[t])
    out.reverse()
    return out
