"""Typed errors of the consent room; each names what was wrong, never a stack of internals."""
from __future__ import annotations

from kernel.errors import UserError


class ConsentError(UserError):
    """Base class of every error this room raises."""


class WhitelistImportError(ConsentError, ValueError):
    """A whitelist file or entry is invalid; `problems` names every bad line or entry."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid whitelist")


class DuplicateWhitelistEntry(ConsentError, ValueError):
    """An entry with the same requester, provider, task and information type already exists."""


class InvalidPolicyRule(ConsentError, ValueError):
    """A disclosure-policy rule is malformed (unknown effect, empty period, bad party)."""


class RuleNotFound(ConsentError, LookupError):
    """The rule is not part of the person's current policy version."""


class ReceiptInvalid(ConsentError):
    """A consent receipt's JWS is malformed, uses another algorithm, or its signature fails."""
