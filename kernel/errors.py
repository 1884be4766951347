"""The one base of every error a user or operator can cause with bad input.

Each room's own error base subclasses `UserError`, so the roof (the CLI, the operator API)
maps them in one place: `str(error)` is a safe one-line reason, never a stack of internals.
"""
from __future__ import annotations

import reprlib

MAX_SHOWN = 80  # characters of a user's value repeated back in a message

# reprlib cuts long strings and deep or long containers before building the text, so even a
# value that stands for a billion items by reference is shown in a few characters
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = MAX_SHOWN
_SHORT.maxlevel = 2


class UserError(Exception):
    """Bad input from a user or an operator; `str(error)` says what was wrong and is safe to show."""


def shown(value: object) -> str:
    """A short repr of `value`: a message never echoes a huge value back in full."""
    text = _SHORT.repr(value)
    if isinstance(value, str) and len(value) > MAX_SHOWN:
        text += f" ({len(value)} characters)"
    return text
