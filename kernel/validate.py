"""One check for identifiers wherever they enter: usernames, agency classes, service-type
URNs, task and information-type codes, local IDs. SQLite keeps a NUL or a tab that PostgreSQL
refuses or a terminal hides, so they are refused at the boundary, before any write."""
from __future__ import annotations

import unicodedata

from kernel.errors import UserError, shown


class InvalidIdentifier(UserError, ValueError):
    """An identifier is empty, too long, or holds a control character (NUL, tab, newline…)."""


def identifier_problem(value: object, *, max_length: int) -> str | None:
    """Why `value` is not an acceptable identifier, or None when it is."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty text"
    if len(value) > max_length:
        return f"is longer than {max_length} characters"
    # controls (NUL, TAB, CR, LF, DEL, C1), invisible format characters (bidi overrides,
    # zero-width space) and lone surrogates; private-use characters stay: 外字 live there
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs")), None)
    if bad is not None:
        return f"must not contain control characters (found U+{ord(bad):04X})"
    return None


def check_identifier(value: object, *, what: str, max_length: int) -> str:
    """`value` if it is a non-empty identifier of at most `max_length` characters without
    control characters; otherwise InvalidIdentifier naming `what` (and a truncated value)."""
    problem = identifier_problem(value, max_length=max_length)
    if problem is not None:
        raise InvalidIdentifier(f"{what} {shown(value)} {problem}")
    return value  # type: ignore[return-value]
