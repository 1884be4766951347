"""The one xs:dateTime reader and writer of the XML layer (XML Schema Part 2 §3.2.7).

SAML core §1.3.3 asks for UTC; an offset is accepted and converted. Times come back as naive
UTC datetimes, the form both databases store. Years outside 1..9999 or offsets that push a
time past them are refused as malformed, never left to overflow later.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime

_XS_DATETIME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{2}:\d{2}:\d{2})(?P<fraction>\.\d{1,9})?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?"
)


def read_xs_datetime(value: str | None) -> datetime:
    """Parse an xs:dateTime into naive UTC; ValueError (with a short reason) if it is not one."""
    if value is None or not value.strip():
        raise ValueError("missing")
    match = _XS_DATETIME.fullmatch(value.strip())
    if match is None:
        raise ValueError("not an xs:dateTime")
    fraction = (match["fraction"] or "")[:7]  # Python keeps microseconds
    zone = match["zone"] or "Z"
    try:
        parsed = datetime.fromisoformat(
            f"{match['date']}T{match['time']}{fraction}{'+00:00' if zone == 'Z' else zone}"
        )
        return parsed.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise ValueError("not a valid time") from None


def xs_datetime(moment: datetime) -> str:
    """Write a time as xs:dateTime in UTC with whole seconds (`2026-12-01T09:00:00Z`)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> datetime:
    """Naive UTC now, comparable with what `read_xs_datetime` returns."""
    return datetime.now(UTC).replace(tzinfo=None)

