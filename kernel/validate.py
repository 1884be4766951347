"""One check for identifiers wherever they enter: usernames, agency classes, service-type
URNs, task and information-type codes, local IDs. SQLite keeps a NUL or a tab that PostgreSQL
refuses or a terminal hides, so they are refused at the boundary, before any write."""
from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from kernel.errors import UserError, shown


def identifier_problem(value: object, *, max_length: int) -> str | None:
    """Why `value` is not an acceptable identifier, or None when it is; each room raises its
    own error with it, so its callers keep catching one type."""
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


def control_problem(value: str, *, allow: str = "") -> str | None:
    """Why free text (a display name, a URL) is refused, or None: controls and invisible format
    characters, which PostgreSQL refuses (NUL) or a terminal or log reader would hide; `allow`
    names the few a field may hold (a line break in a cited law)."""
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs") and c not in allow), None)
    return None if bad is None else f"must not contain control characters (found U+{ord(bad):04X})"


def _no_controls(value: str) -> str:
    if problem := control_problem(value):
        raise ValueError(problem)
    return value


def bounded_text(max_length: int, *, min_length: int = 1) -> object:
    """A pydantic string type for an API boundary: at most the column's length, no control
    characters; a violation is a 422 that names the field, before anything is written."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length),
                     AfterValidator(_no_controls)]


class UndecodableText(UserError, ValueError):
    """An uploaded text file is in none of the encodings tried (or the one named)."""


# what operators' spreadsheets write: UTF-8 (with or without a BOM), UTF-16 with a BOM, and
# Shift_JIS as Excel in Japan saves it (CP932, a superset of Shift_JIS)
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
FALLBACK_ENCODINGS = ("utf-8", "cp932")


def decode_text(data: bytes, *, source: str, encoding: str | None = None) -> str:
    """`data` as text: in `encoding` when named; else by its BOM (UTF-8, UTF-16); else strict
    UTF-8, then CP932 (Shift_JIS). Refuses with the file's name when nothing decodes it."""
    if encoding:
        try:
            return data.decode(encoding)
        except LookupError:
            raise UndecodableText(f"{source}: unknown encoding {shown(encoding)}") from None
        except UnicodeDecodeError as exc:
            raise UndecodableText(f"{source}: not valid {encoding} at byte {exc.start}") from None
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec).removeprefix("\ufeff")
            except UnicodeDecodeError as exc:
                raise UndecodableText(f"{source}: not valid {codec} at byte {exc.start}") from None
    for codec in FALLBACK_ENCODINGS:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    raise UndecodableText(
        f"{source}: neither UTF-8 nor Shift_JIS (CP932); save it as UTF-8 or name its encoding "
        "with --encoding"
    )
