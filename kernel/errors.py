"""The one base of every error a user or operator can cause with bad input.

Each room's own error base subclasses `UserError`, so the roof (the CLI, the operator API)
maps them in one place: `str(error)` is a safe one-line reason, never a stack of internals.
"""
from __future__ import annotations

MAX_SHOWN = 80  # characters of a user's value repeated back in a message


class UserError(Exception):
    """Bad input from a user or an operator; `str(error)` says what was wrong and is safe to show."""


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """`repr(value)`, cut to `limit` characters: a message never echoes a huge value back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(str(value))} characters)"
