"""The portal's languages: Japanese by default, English on a switch that persists (a cookie).

Templates mark text with `{{ _("…") }}`; the message IDs are the Japanese text itself, so
Japanese needs no catalog and English comes from the `.po` files in `portal/locale/en/LC_MESSAGES/`
(gettext, read through Babel when the process starts). Dates are written in the language's
own format by Babel. The language of one request lives in a context variable, so one template
environment serves every language.
"""
from __future__ import annotations

import contextvars
from datetime import datetime
from functools import cache
from io import BytesIO
from pathlib import Path

from babel.core import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LANGUAGES = ("ja", "en")
DEFAULT = "ja"
COOKIE = "portal_lang"
_LOCALE_DIR = Path(__file__).resolve().parent / "locale"
_current: contextvars.ContextVar[str] = contextvars.ContextVar("portal_lang", default=DEFAULT)


def choose(value: str | None) -> str:
    return value if value in LANGUAGES else DEFAULT


def set_language(lang: str) -> None:
    _current.set(choose(lang))


def current() -> str:
    return _current.get()


@cache
def catalog(lang: str) -> Translations | None:
    """The compiled catalog of `lang` (None for Japanese: the message IDs are Japanese).

    Every `*.po` file of the language is read (one per part of the portal) and merged."""
    files = sorted((_LOCALE_DIR / lang / "LC_MESSAGES").glob("*.po"))
    if lang == DEFAULT or not files:
        return None
    merged = None
    for po in files:
        with po.open("rb") as fh:
            messages = read_po(fh, locale=lang)
        buffer = BytesIO()
        write_mo(buffer, messages)
        buffer.seek(0)
        part = Translations(fp=buffer)
        merged = part if merged is None else merged.merge(part) or merged
    return merged


def gettext(message: str) -> str:
    translations = catalog(current())
    return translations.gettext(message) if translations else message


def ngettext(singular: str, plural: str, n: int) -> str:
    translations = catalog(current())
    if translations:
        return translations.ngettext(singular, plural, n)
    return singular if n == 1 else plural


@cache
def _medium(lang: str):
    """The locale and its parsed medium date, time and date-time patterns (what Babel's
    format_date/format_datetime look up and parse on every call; a history page has ~100 times)."""
    locale = Locale.parse("ja_JP" if lang == "ja" else "en_GB")
    return (locale, locale.date_formats["medium"], locale.time_formats["medium"],
            locale.datetime_formats["medium"].replace("'", ""))


def when(value: datetime | None, *, date_only: bool = False) -> str:
    """A time in the current language's format (times are stored and shown in UTC here); the
    same text as Babel's format_datetime(value, "medium") (tests/test_portal.py compares them)."""
    if value is None:
        return ""
    locale, date_pattern, time_pattern, joined = _medium(current())
    day = date_pattern.apply(value, locale)
    if date_only:
        return day
    return joined.replace("{0}", time_pattern.apply(value, locale)).replace("{1}", day)


def install(env) -> None:
    """Give a Jinja environment `_()`, `ngettext()`, `when` and the current `lang`."""
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(gettext, ngettext, newstyle=True)
    env.globals["when"] = when
    env.globals["current_lang"] = current
