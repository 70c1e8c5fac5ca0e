"""Limits and character sets of the free text the ledger records, in one place.

Free text arrives from whoever makes a request. Names, labels and reasons are chosen
by a user of the platform and must be plain, printable text of bounded length: control
characters (ESC, BEL, CR, LF, NUL, ...), Unicode format characters (bidi overrides,
zero-width characters), line and paragraph separators, unpaired surrogates and
unassigned code points are refused, with an error naming the field.

A user agent is different: it is what the remote party sent, possibly an attacker, and a
login or an access check must be recorded whatever it holds, or a hostile user agent
would keep a guess out of the record. So a user agent is never refused: it is bounded
(``MAX_USER_AGENT`` characters, the rest replaced by a note of how much was cut) and the
characters no database can hold (NUL, unpaired surrogates) become U+FFFD. Everything else
is kept as evidence; every output makes it inert.
"""

from __future__ import annotations

import re
import unicodedata

MAX_LABEL = 200
MAX_REASON = 500
MAX_USER_AGENT = 512
MAX_SECRET = 65536  # bytes of a password, code or token read at the edge, before any check

# Unicode categories refused in names, labels and reasons: Cc control, Cf format,
# Zl/Zp separators, Cs surrogates, Co private use, Cn unassigned.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# Who acted: an identity from the platform (a username, an employee id, an API key id,
# a system component), never free text.
ACTOR_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$"
# Correlation ids as proxies and platforms make them (UUIDs, ULIDs, base64, dotted).
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}$"
_ACTOR_ID = re.compile(ACTOR_ID_PATTERN)
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def first_refused_character(text: str) -> str | None:
    """The first character of ``text`` a name, label or reason may not hold, if any."""
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return char
    return None


def describe_character(char: str) -> str:
    name = unicodedata.name(char, "") if unicodedata.category(char) != "Cs" else ""
    return f"U+{ord(char):04X}" + (f" ({name.lower()})" if name else "")


def check_plain_text(text: str) -> str:
    """``text`` if it is plain printable text; ValueError naming the first bad character."""
    char = first_refused_character(text)
    if char is not None:
        raise ValueError(
            f"holds {describe_character(char)}: control, format and separator characters "
            "are not allowed"
        )
    return text


def bound_user_agent(text: str | None) -> str | None:
    """A user agent as the ledger keeps it: at most MAX_USER_AGENT characters (plus a
    note of what was cut), NUL and unpaired surrogates replaced by U+FFFD."""
    if text is None:
        return None
    text = _UNSTORABLE.sub("\ufffd", text)
    if len(text) > MAX_USER_AGENT:
        cut = len(text) - MAX_USER_AGENT
        text = f"{text[:MAX_USER_AGENT]}…[{cut} more characters not kept]"
    return text


def check_actor_id(text: str) -> str:
    if not _ACTOR_ID.match(text):
        raise ValueError(
            "actor id must be 1-128 characters of letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return text


def check_request_id(text: str) -> str:
    if not _REQUEST_ID.match(text):
        raise ValueError(
            "request id must be 1-128 characters of letters, digits and . _ : / + = @ -, "
            "starting with a letter or digit"
        )
    return text
