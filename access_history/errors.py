"""Typed errors of the access-history room; each says what failed, never a stack of internals."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from access_history.service import VerificationReport


class AccessHistoryError(Exception):
    """Base class of every error this room raises."""


class InvalidLogEntry(AccessHistoryError, ValueError):
    """A log entry to append is malformed (unknown kind, missing decision outcome, oversize)."""


class LogWriteFailed(AccessHistoryError):
    """The entry could not be written; the caller must roll back and disclose nothing.

    DESIGN.md, "Log before disclose": if logging fails, the request fails.
    """


class ExportInvalid(AccessHistoryError):
    """An exported log does not verify: a row was changed, removed, inserted or reordered, or
    the checkpoint's root or signature does not match. `report` names the first bad seq."""

    def __init__(self, report: VerificationReport):
        self.report = report
        where = f" at seq {report.first_bad_seq}" if report.first_bad_seq is not None else ""
        owner = f" in the log of {report.owner}" if report.owner else ""
        super().__init__(f"export invalid{owner}{where}: {report.problem}")
